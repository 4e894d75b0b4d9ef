import pytest

from inferwatch.proxy.routes import classify, split_target


@pytest.mark.parametrize(("method", "path", "kind", "model"), [
    ("POST", "/predictions/resnet18", "inference", "resnet18"),
    ("POST", "/predictions/resnet18/2.0", "inference", "resnet18"),
    ("POST", "/predictions/resnet18/", "inference", "resnet18"),
    ("POST", "/v2/models/digits/infer", "inference", "digits"),
    ("POST", "/v2/models/digits/versions/1/infer", "inference", "digits"),
    ("POST", "/v2/models/my%20model/infer", "inference", "my model"),
    ("PUT", "/predictions/resnet18", "inference", "resnet18"),
    ("PUT", "/predictions/resnet18/2.0", "inference", "resnet18"),
    ("POST", "/infer", "seed", "default"),
    ("POST", "/v1/chat/completions", "openai", None),
    ("POST", "/v1/embeddings", "openai", None),
    ("GET", "/predictions/resnet18", "method_not_allowed", "resnet18"),
    ("GET", "/infer", "method_not_allowed", "default"),
    ("GET", "/ping", "passthrough", None),
    ("GET", "/models", "passthrough", None),
    ("GET", "/v2", "passthrough", None),
    ("GET", "/v2/health/ready", "passthrough", None),
    ("GET", "/v2/health/live", "passthrough", None),
    ("GET", "/v2/models/digits", "passthrough", None),
    ("GET", "/v2/models/digits/ready", "passthrough", None),
    ("GET", "/v2/models/digits/versions/1", "passthrough", None),
    ("GET", "/v1/models", "passthrough", None),
    ("GET", "/v1/models/meta-llama/Llama-3-8B", "passthrough", None),
    ("POST", "/explanations/resnet18", "passthrough", None),
    ("PUT", "/explanations/resnet18/2.0", "passthrough", None),
    ("GET", "/explanations/resnet18", "method_not_allowed", None),
    ("PUT", "/v2/models/digits/infer", "method_not_allowed", "digits"),
    ("PUT", "/infer", "method_not_allowed", "default"),
    ("POST", "/ping", "method_not_allowed", None),
    ("DELETE", "/v2/models/digits", "method_not_allowed", None),
    ("GET", "/metrics", "metrics", None),
    ("POST", "/metrics", "method_not_allowed", None),
    # never forwarded: other paths, and paths that could escape their route upstream
    ("GET", "/", "not_found", None),
    ("POST", "/admin", "not_found", None),
    ("GET", "/v2/models", "not_found", None),
    ("GET", "/v2/repository/index", "not_found", None),
    ("POST", "/predictions/..", "not_found", None),
    ("POST", "/predictions/%2e%2e/x", "not_found", None),
    ("POST", "/predictions/..%2F..%2Fadmin", "not_found", None),
    ("POST", "/predictions/a%2fb", "not_found", None),
    ("POST", "/predictions/a%5cb", "not_found", None),
    ("GET", "/v2/health/../../admin", "not_found", None),
    ("GET", "//ping", "not_found", None),
    ("POST", "/v2/models/m/versions/1/2/infer", "not_found", None),
    ("POST", "/explanations/a/b/c", "not_found", None),
    ("POST", "/explanations/..%2Fadmin", "not_found", None),
])
def test_classify(method: str, path: str, kind: str, model: str | None) -> None:
    route = classify(method, path, "default")
    assert (route.kind, route.model) == (kind, model)
    assert route.counted == (kind in ("inference", "seed", "openai")
                             or (kind == "method_not_allowed" and model is not None))


def test_split_target_keeps_path_and_query_only() -> None:
    assert split_target(b"/ping") == ("/ping", b"")
    assert split_target(b"/p?a=1&b") == ("/p", b"?a=1&b")
    assert split_target(b"http://other.example:9/v2/health/ready?x") == ("/v2/health/ready", b"?x")
    assert split_target(b"HTTPS://other.example") == ("/", b"")
    for bad in (b"other.example:443", b"*", b"ftp://x/y", b"/caf\xc3\xa9"):
        assert split_target(bad) is None
