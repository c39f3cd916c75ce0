"""A console that loses its database or its broker says so on every page and recovers."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from brokerkit import running_broker
from pgkit import running_postgres

from console_web.webkit import ConsoleServer, login, wait_for, wardtap


def test_database_and_broker_loss_are_shown_on_every_page_and_recovered(tmp_path: Path) -> None:
    pg_dir = Path(tempfile.mkdtemp(prefix="wardtap-pg-"))
    pg_dir.chmod(0o755)
    try:
        _lose_and_recover(pg_dir, tmp_path)
    finally:
        shutil.rmtree(pg_dir, ignore_errors=True)


def _lose_and_recover(pg_dir: Path, tmp_path: Path) -> None:
    with running_postgres(pg_dir / "cluster") as pg, \
            running_broker(tmp_path / "broker", tls=False) as broker:
        db = pg.create_database()
        assert wardtap("fleet", "user", "add", "ops", "--role", "operator",
                       "--password-stdin", "--db", db,
                       stdin="ops-password-0123\n").returncode == 0
        console = ConsoleServer(tmp_path, db, broker.url, None)
        try:
            client = login(console.url, "ops", "ops-password-0123")
            wait_for(lambda: "broker:" not in client.get("/").text, timeout=20,
                     what="the console connected to the broker")
            pages = ["/", "/devices", "/violations", "/policies", "/audit"]
            pg.stop("immediate")                         # the database is gone
            for page in pages:
                r = client.get(page)
                assert r.status_code == 503 and "Database unreachable" in r.text, page
            assert client.get("/health").status_code == 503
            pg.start()                                   # ... and back: no restart needed
            wait_for(lambda: client.get("/").status_code == 200, timeout=30,
                     what="the console to reach the database again")
            for page in pages:
                r = client.get(page)
                assert r.status_code == 200 and "Database unreachable" not in r.text, page
            broker.stop()                                # the broker is gone
            wait_for(lambda: "broker:" in client.get("/").text, timeout=30,
                     what="the broker banner")
            for page in pages:
                assert "the broker at" in client.get(page).text, page
            broker.start()
            wait_for(lambda: "broker:" not in client.get("/").text, timeout=60,
                     what="the console to reconnect to the broker")
            assert client.get("/health").status_code == 200
        finally:
            console.close()
