from inferwatch.extras import require

require("stack", "yaml", "bcrypt", "httpx", "grafana_foundation_sdk")
