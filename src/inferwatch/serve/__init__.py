from inferwatch.extras import require

require("serve", "uvicorn", "sklearn", "PIL", "threadpoolctl")
