"""The throwaway PostgreSQL server of the tests: it says how to install PostgreSQL when it is missing (a
failure, never a skip), serves on 127.0.0.1 with per-test databases, and leaves nothing behind when stopped."""

from __future__ import annotations

import socket

import psycopg
import pytest
from support import postgres as support_postgres
from support.postgres import PostgresCluster


def test_a_machine_without_postgresql_fails_saying_how_to_install_it(monkeypatch):
    monkeypatch.setattr(support_postgres.glob, "glob", lambda pattern: [])
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install -y postgresql"):
        PostgresCluster()


def test_a_stopped_server_is_gone_with_its_folder():
    cluster = PostgresCluster().start()
    try:
        url = cluster.create_database("t_cluster_check")
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT current_database(), inet_server_addr()::text").fetchone() == (
                "t_cluster_check", "127.0.0.1/32")
        assert cluster.data.is_dir()
    finally:
        cluster.stop()
    assert not cluster.base.exists()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", cluster.port)) != 0, "the server still listens"
    cluster.stop()  # twice (the fixture, then interpreter exit): nothing to do
