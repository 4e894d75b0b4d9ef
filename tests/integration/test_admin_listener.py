"""The admin API listens on 127.0.0.1 whatever address the service binds. The service binds
127.0.0.2 here: another address, still loopback, so the test exposes nothing."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from inferwatch.secrets import write_secret_file
from inferwatch.stack.addresses import free_ports


def listening(port: int) -> set[str]:
    """Local addresses (hex, as the kernel writes them) with a TCP listener on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            host, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(host)
    return found


def test_admin_stays_on_127_0_0_1_when_the_service_binds_elsewhere(tmp_path: Path) -> None:
    service_port, admin_port = free_ports(2)
    token = "k" * 32
    token_file = write_secret_file(tmp_path / "token", token)
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferwatch", "serve", "--host", "127.0.0.2",
         "--port", str(service_port), "--admin-port", str(admin_port),
         "--admin-token-file", str(token_file)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (listening(service_port) and listening(admin_port)):
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "serve did not listen"
            time.sleep(0.2)
        assert listening(service_port) == {"0200007F"}  # 127.0.0.2
        assert listening(admin_port) == {"0100007F"}  # 127.0.0.1
        admin = f"http://127.0.0.1:{admin_port}/admin/faults"
        assert httpx.get(admin).status_code == 401
        assert httpx.get(admin, headers={"Authorization": "Bearer " + "x" * 32}
                         ).status_code == 401
        assert httpx.get(admin, headers={"Authorization": f"Bearer {token}"}
                         ).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
