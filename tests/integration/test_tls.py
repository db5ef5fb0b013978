"""NATS and Redis over TLS: a deployment whose servers require TLS works end to end for services that trust
its CA, and a client that does not is refused; bad TLS settings for Redis are a one-line error."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import nats
import orjson
import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from contracts.subjects import PIPELINE_STREAM
from services.ops import observe
from services.ops.stack import Stack
from tests.integration.conftest import stream_messages, wait_for

pytestmark = pytest.mark.integration


def make_certificates(folder: Path) -> Path:
    """A throw-away CA and a server certificate for 127.0.0.1 signed by it (openssl)."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=tradeflow test CA",
        "-keyout", "ca-key.pem", "-out", "ca.pem")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server-key.pem",
        "-out", "server.csr")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
        "-days", "2", "-extfile", "san.ext", "-out", "server.pem")
    return folder


async def test_a_tls_deployment_works_for_clients_that_trust_its_ca(tmp_path):
    (tmp_path / "certs").mkdir()
    certs = make_certificates(tmp_path / "certs")
    stack = Stack(tmp_path / "stack", services=("quant",), tls_dir=certs)
    await stack.start()   # a failed start stops what it started
    try:
        trusted = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        nc = await nats.connect(stack.nats_url, tls=trusted)
        try:
            signal = {"symbol": "TLS", "ts": "2024-01-02T14:30:00Z", "side": "buy", "strength": 0.5, "price": 1.0,
                      "strategy": "t"}
            await nc.jetstream().publish("signals_ready.TLS", orjson.dumps(signal))

            async def validated() -> bool:
                return bool(await stream_messages(nc, PIPELINE_STREAM, "validated_ready.>"))

            await wait_for(validated, timeout=30, what="quant, over TLS, to validate the signal")
            assert await observe.dead_letters(nc.jsm()) == 0
            assert stack.redis_url.startswith("rediss://")
            async with Redis.from_url(stack.redis_url, ssl_ca_certs=str(certs / "ca.pem")) as redis:

                async def marked() -> bool:   # marks follow the acks by up to 50 ms
                    return bool(await redis.keys("tradeflow:done:{quant}:*"))

                await wait_for(marked, timeout=10, what="quant's marks, written over TLS")
            with pytest.raises(RedisError):   # no CA to trust
                async with Redis.from_url(stack.redis_url, socket_connect_timeout=3) as untrusted:
                    await untrusted.ping()
            with pytest.raises(RedisError):   # plain TCP to a TLS-only port
                async with Redis.from_url(stack.redis_url.replace("rediss://", "redis://"),
                                          socket_connect_timeout=3, socket_timeout=3) as plain:
                    await plain.ping()
        finally:
            await nc.close()

        with pytest.raises((ssl.SSLError, nats.errors.Error, OSError)):   # no CA to trust: no handshake
            await nats.connect(stack.nats_url, tls=ssl.create_default_context(), allow_reconnect=False,
                               connect_timeout=3, max_reconnect_attempts=1)
        cli = subprocess.run([sys.executable, "-m", "services.cli", "tail", ">", "--count", "1"], capture_output=True,
                             text=True, timeout=30, env={**os.environ, "NATS_URL": stack.nats_url,
                                                         "TRADEFLOW_NATS_CA": str(tmp_path / "missing.pem")})
        assert cli.returncode == 1 and "TRADEFLOW_NATS_CA" in cli.stderr, cli.stderr
    finally:
        codes = await stack.stop()
    assert all(code in (0, None) for code in codes.values()), codes


@pytest.mark.parametrize("env, message", [
    ({"TRADEFLOW_REDIS_CA": "/nonexistent/ca.pem"}, "TRADEFLOW_REDIS_CA: no file /nonexistent/ca.pem"),
    ({"TRADEFLOW_REDIS_CERT": __file__}, "TRADEFLOW_REDIS_CERT and TRADEFLOW_REDIS_KEY go together"),
    ({"TRADEFLOW_REDIS_CA": __file__, "REDIS_URL": "redis://127.0.0.1:1/0"}, "REDIS_URL is not rediss://"),
])
def test_redis_tls_settings_that_cannot_work_are_a_one_line_error(env, message):
    run = subprocess.run([sys.executable, "-m", "services.cli", "run", "quant"], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "NATS_URL": "nats://127.0.0.1:1", "TRADEFLOW_HTTP_PORT": "0",
                                          "REDIS_URL": "rediss://127.0.0.1:1/0", **env})
    assert run.returncode == 1 and message in run.stderr.splitlines()[-1], run.stderr[-500:]
