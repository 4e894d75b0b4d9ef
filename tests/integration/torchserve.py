"""TorchServe as the integration tests run it: installed as a user would (`make test` puts
it in .venv-torchserve, Java from Debian), the project's digits MLP exported to TorchScript,
archived with TorchServe's own torch-model-archiver, served on free loopback ports.

It serves the model twice: ``digits`` with TorchServe's defaults, and ``digits-shed`` with a
job queue of two, which a burst overflows; one JVM for both saves a start (~10 s)."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx

from inferwatch.models.digits import load_weights
from inferwatch.stack.addresses import free_ports

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-torchserve"
MODEL = "digits"
SHEDDING = "digits-shed"
# model-config.yaml, packed in the archive: TorchServe's per-model settings.
MODEL_CONFIGS = {MODEL: "minWorkers: 1\nmaxWorkers: 1\n",
                 SHEDDING: "minWorkers: 1\nmaxWorkers: 1\njobQueueSize: 2\n"}


def missing() -> str | None:
    """Why TorchServe cannot run here, or None when it can."""
    if shutil.which("java") is None:
        return "java is not installed: `make test` installs openjdk-17-jre-headless"
    if not (VENV / "bin" / "torchserve").is_file():
        return "TorchServe is not installed: `make test` puts it in .venv-torchserve"
    return None


# Run by the venv's Python: TorchServe's workers load the file with that same torch.
EXPORT = """
import json, sys
import torch

w = json.load(open(sys.argv[1]))
net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
with torch.no_grad():
    for layer, (weight, bias) in zip((net[0], net[2]), (("w1", "b1"), ("w2", "b2"))):
        layer.weight.copy_(torch.tensor(w[weight]).T)  # sklearn multiplies x @ w
        layer.bias.copy_(torch.tensor(w[bias]))
torch.jit.script(net).save(sys.argv[2])
"""

# A custom handler, as TorchServe's docs write one: a module-level `handle`, called once
# with None at load. The body {"pixels": 64 values 0..16} answers {"digit": n}; "sleep"
# (seconds) hangs the worker, "fail" makes it die ("exit") or run out of memory ("memory").
HANDLER = """
import json
import os
import time

import torch

model = None


def handle(data, context):
    global model
    if model is None:
        model = torch.jit.load(os.path.join(context.system_properties["model_dir"], "model.pt"))
    if data is None:
        return None
    answers = []
    for row in data:
        body = row.get("body")
        request = body if isinstance(body, dict) else json.loads(body)
        if request.get("fail") == "exit":
            os._exit(1)
        if request.get("fail") == "memory":
            raise MemoryError("asked to")
        if request.get("fail") == "raise":
            raise RuntimeError("asked to")
        time.sleep(request.get("sleep", 0))
        with torch.no_grad():
            x = torch.tensor(request["pixels"], dtype=torch.float32).reshape(1, 64) / 16.0
            answers.append({"digit": int(model(x).argmax())})
    return answers
"""


def build_model_store(directory: Path) -> Path:
    """A model store holding an archive per model, built by the venv's torch-model-archiver."""
    directory.mkdir(parents=True, exist_ok=True)
    weights, _ = load_weights()
    (directory / "weights.json").write_text(json.dumps(
        {k: weights[k].tolist() for k in ("w1", "b1", "w2", "b2")}))
    (directory / "handler.py").write_text(HANDLER)
    bin_dir = VENV / "bin"
    subprocess.run([str(bin_dir / "python"), "-c", EXPORT, str(directory / "weights.json"),
                    str(directory / "model.pt")], check=True, timeout=120, capture_output=True)
    store = directory / "store"
    store.mkdir()
    for name, config in MODEL_CONFIGS.items():
        (directory / f"{name}.yaml").write_text(config)
        subprocess.run([str(bin_dir / "torch-model-archiver"), "--model-name", name,
                        "--version", "1", "--serialized-file", str(directory / "model.pt"),
                        "--handler", str(directory / "handler.py"),
                        "--config-file", str(directory / f"{name}.yaml"),
                        "--export-path", str(store)],
                       check=True, timeout=60, capture_output=True)
    return store


class TorchServe:
    """One TorchServe on free loopback ports, with a directory of its own.

    Its own TMPDIR matters: TorchServe keeps its pid file (/tmp/.model_server.pid) and its
    workers' Unix sockets there, so two instances with the default would collide.
    """

    def __init__(self, directory: Path, store: Path) -> None:
        self.directory = directory
        self.tmp = directory / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        ports = free_ports(6)
        self.inference, self.management, self.metrics = (
            f"http://127.0.0.1:{p}" for p in ports[:3])
        self.config = directory / "config.properties"
        self.config.write_text("\n".join([
            f"inference_address={self.inference}",
            f"management_address={self.management}",
            f"metrics_address={self.metrics}",
            "grpc_inference_address=127.0.0.1",
            "grpc_management_address=127.0.0.1",
            f"grpc_inference_port={ports[3]}",
            f"grpc_management_port={ports[4]}",
            f"initial_worker_port={ports[5]}",  # names the workers' sockets in TMPDIR
            "metrics_mode=prometheus",
            f"model_store={store}",
            "load_models=" + ",".join(f"{name}={name}.mar" for name in MODEL_CONFIGS),
        ]) + "\n")
        self.log = directory / "torchserve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120) -> float:
        """Start it and wait until every model has a worker; returns the seconds that took."""
        self.stop()  # what a crash left: the launcher to reap, orphaned workers
        started = time.monotonic()
        env = {**os.environ, "TMPDIR": str(self.tmp), "TEMP": str(self.tmp),
               "LOG_LOCATION": str(self.directory / "logs"),
               "METRICS_LOCATION": str(self.directory / "logs")}
        with self.log.open("ab") as out:
            # --foreground keeps the launcher as our child; the new session is the group that
            # stop() signals, the JVM and its Python workers included.
            self.proc = subprocess.Popen(
                [str(VENV / "bin" / "torchserve"), "--start", "--foreground", "--ncs",
                 "--disable-token-auth", "--ts-config", str(self.config)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True)
        for name in MODEL_CONFIGS:
            self.wait_worker(name, started + timeout)
        return time.monotonic() - started

    def ready_worker(self, model: str) -> int | None:
        """The pid of a worker of ``model`` ready to serve, if there is one."""
        try:
            answer = httpx.get(f"{self.management}/models/{model}", timeout=2)
        except httpx.HTTPError:
            return None
        if answer.status_code != 200:
            return None
        return next((int(w["pid"]) for w in answer.json()[0]["workers"]
                     if w["status"] == "READY"), None)

    def wait_worker(self, model: str, deadline: float, replacing: int | None = None) -> int:
        """Wait until ``model`` has a ready worker (another than ``replacing``); returns its
        pid."""
        assert self.proc is not None
        while (pid := self.ready_worker(model)) is None or pid == replacing:
            assert self.proc.poll() is None, f"TorchServe exited:\n{self.tail()}"
            assert time.monotonic() < deadline, f"no worker ready:\n{self.tail()}"
            time.sleep(0.2)
        return pid

    def scale_workers(self, model: str, n: int) -> None:
        answer = httpx.put(f"{self.management}/models/{model}", timeout=120, params={
            "min_worker": n, "max_worker": n, "synchronous": "true"})
        assert answer.status_code == 200, answer.text

    def kill_java(self) -> None:
        """SIGKILL the JVM alone, as a crash would; the launcher then exits. Returns at once:
        :meth:`start` or :meth:`stop` collects what is left."""
        # The launcher writes the JVM's pid there.
        os.kill(int((self.tmp / ".model_server.pid").read_text()), signal.SIGKILL)

    def stop(self) -> None:
        if self.proc is None:
            return
        if not self._end_group(signal.SIGTERM, 20):
            self._end_group(signal.SIGKILL, 10)
        self.proc.wait(10)

    def _end_group(self, sig: signal.Signals, timeout: float) -> bool:
        """Signal the process group; True once none of it is left."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
            while time.monotonic() < deadline:
                self.proc.poll()  # reaps the launcher, the group's leader
                os.killpg(self.proc.pid, 0)
                time.sleep(0.1)
            return False
        return True

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]
