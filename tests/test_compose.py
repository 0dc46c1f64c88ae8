"""docker-compose.yml cannot be started on these machines (no Docker engine), so it is checked by
reading it: every service's command, environment and mounted files must refer to things that exist.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
CODE = "\n".join(p.read_text() for d in ("transforms", "plugins") for p in (ROOT / d).rglob("*.py"))


def _commands(svc: dict) -> list[list[str]]:
    cmd = svc.get("command")
    if cmd is None:
        return []
    if isinstance(cmd, str):
        cmd = shlex.split(cmd)
    if cmd[:2] == ["bash", "-c"]:
        return [shlex.split(part) for part in re.split(r"&&|;", cmd[2])]
    return [cmd]


def test_listener_is_its_own_always_on_service():
    svc = SERVICES["hl7ics-listener"]
    assert svc["command"][:2] == ["hl7ics", "listen"] and svc["restart"] == "always" and "healthcheck" in svc
    flags = svc["command"][2:]
    from transforms.cli import build_parser

    args = build_parser().parse_args(svc["command"][1:])
    assert args.port == 2575 and args.tls_client_ca and "--metrics-port" in flags
    for secret in COMPOSE["secrets"].values():
        assert secret["file"].startswith("./secrets/")  # provided by the deployment, never committed


def test_production_shape():
    for name in ("postgres", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                 "airflow-worker"):
        assert name in SERVICES, name
    worker_env = SERVICES["airflow-worker"]["environment"]
    assert worker_env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert worker_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
    assert worker_env["HL7ICS_WAREHOUSE_URL"].startswith("postgresql")


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_commands_exist(name):
    from transforms.cli import build_parser

    hl7ics_subcommands = set(build_parser()._subparsers._group_actions[0].choices)
    airflow_subcommands = {"api-server", "scheduler", "dag-processor", "triggerer", "celery", "db"}
    for cmd in _commands(SERVICES[name]):
        if cmd[0] == "hl7ics":
            assert cmd[1] in hl7ics_subcommands, f"{name}: hl7ics {cmd[1]} does not exist"
        elif cmd[0] == "airflow":
            assert cmd[1] in airflow_subcommands, f"{name}: airflow {cmd[1]}"
        elif cmd[0] == "python":
            assert cmd[1] == "-c"
        else:
            assert cmd[0] in ("postgres",), f"{name}: unexpected program {cmd[0]}"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_environment_is_read_somewhere(name):
    from airflow.configuration import conf

    env = SERVICES[name].get("environment") or {}
    for key in env:
        if key.startswith("HL7ICS_"):
            assert key in CODE, f"{name}: {key} is not read by the code"
        elif key.startswith("AIRFLOW__"):
            _, section, option = key.split("__", 2)
            known = conf.configuration_description.get(section.lower(), {}).get("options", {})
            assert option.lower() in known, f"{name}: unknown Airflow option {key}"
        elif key.startswith("AIRFLOW_CONN_"):
            conn_id = key[len("AIRFLOW_CONN_"):].lower()
            assert f'"{conn_id}"' in CODE, f"{name}: connection {conn_id} is never used"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_mounted_files_and_build_context_exist(name):
    svc = SERVICES[name]
    if "build" in svc:
        ctx = svc["build"] if isinstance(svc["build"], str) else svc["build"].get("context", ".")
        assert (ROOT / ctx / "Dockerfile").is_file()
    for vol in svc.get("volumes") or []:
        src = vol.split(":", 1)[0]
        if src.startswith("./"):
            assert (ROOT / src).exists(), f"{name}: {src} missing"


def test_dockerfile_copies_existing_paths():
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY"):
            parts = [p for p in line.split()[1:-1] if not p.startswith("--")]
            for p in parts:
                assert (ROOT / p).exists(), p


def test_the_bench_runs_postgresql_with_the_compose_files_settings():
    """``make bench`` measures the ingest on a private server started with the ``-c`` settings of
    the compose file's ``postgres`` service (production's configuration): they are read from the
    file, and the server it starts really runs with them."""
    import psycopg

    from bench.pg_server import Unavailable, compose_configured_server, compose_settings
    from tests.conftest import require

    settings = compose_settings()
    wanted = dict(s.split("=", 1) for s in settings)
    assert wanted["wal_buffers"] == "64MB" and settings == [a for a in SERVICES["postgres"]["command"]
                                                           if "=" in a]
    try:
        with compose_configured_server() as dsn, psycopg.connect(dsn) as conn:
            got = {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in wanted}
            tmp = conn.execute("SHOW unix_socket_directories").fetchone()[0]
    except Unavailable as exc:
        require(str(exc), "install PostgreSQL's server binaries (pg_config --bindir)")
        return
    assert got == wanted
    assert not Path(tmp).exists()  # stopped and deleted afterwards


def test_the_warehouse_database_is_created_as_the_code_expects():
    """config/postgres/init.sql creates the warehouse with the options the tests' and the
    benchmark's databases get (PG_DATABASE_OPTIONS): byte-order collation."""
    from transforms.warehouse import PG_DATABASE_OPTIONS

    init = (ROOT / "config" / "postgres" / "init.sql").read_text(encoding="utf-8")
    create = re.search(r"^CREATE DATABASE hl7ics\b[^;]*;", init, re.M)
    assert create, "init.sql creates no hl7ics database"
    assert create.group(0).rstrip(";").endswith(PG_DATABASE_OPTIONS)
