"""SFTP as an ingest source, against a real SFTP server on loopback: files are staged and loaded,
the remote file is moved only after the local commit, a crash between commit and remote move loads
nothing twice, and a wrong host key stages nothing."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from transforms.config import Settings
from transforms.generator import generate_mix
from transforms.ingest import Ingestor

from sftp_support import SftpServer
from test_ingest import scalar

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "remote"
    (root / "outbound").mkdir(parents=True)
    with SftpServer(root) as srv:
        yield srv


def _settings(tmp_path, warehouse_url, monkeypatch, server, host_key=None, **options) -> Settings:
    cfg = tmp_path / "config"
    shutil.copytree(ROOT / "config", cfg)
    doc = yaml.safe_load((cfg / "facilities.yaml").read_text(encoding="utf-8"))
    for f in doc["facilities"]:
        if f["code"] == "HD-TSEVIE":
            f["sources"] = [{"type": "sftp", "conn_id": "hl7ics_sftp_test", "path": "/outbound", "glob": "*.hl7",
                             **options}]
    (cfg / "facilities.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    conn = server.connection("/")
    if host_key:
        conn["extra"] = {**conn["extra"], "host_key": host_key}
        conn["extra"].pop("known_hosts", None)
    monkeypatch.setenv("AIRFLOW_CONN_HL7ICS_SFTP_TEST", json.dumps(conn))
    return Settings.load(cfg, warehouse_url)


def _with_lab_folder(tmp_path, warehouse_url, monkeypatch, server) -> Settings:
    """HD-TSEVIE with a second SFTP folder, /lab, holding a b.hl7 of 10 messages."""
    (server.root / "lab").mkdir()
    (server.root / "lab" / "b.hl7").write_bytes(b"\r".join(generate_mix(10, seed=14)))
    settings = _settings(tmp_path, warehouse_url, monkeypatch, server)
    doc = yaml.safe_load((settings.config_dir / "facilities.yaml").read_text(encoding="utf-8"))
    for f in doc["facilities"]:
        if f["code"] == "HD-TSEVIE":
            f["sources"].append({"type": "sftp", "conn_id": "hl7ics_sftp_test", "path": "/lab", "glob": "*.hl7"})
    (settings.config_dir / "facilities.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return Settings.load(settings.config_dir, warehouse_url)


def _load_staged(settings: Settings, run_id: str = "run-1"):
    """Stage HD-TSEVIE's remote files and load them, as the DAG's first two tasks do."""
    ing = Ingestor(settings, run_id=run_id)
    ing.sync_facilities()
    staged = ing.stage("HD-TSEVIE")
    return ing, staged, ing.ingest_staged("HD-TSEVIE", staged)


def test_remote_files_are_finished_only_after_the_commit(tmp_path, warehouse_url, hl7ics_home, monkeypatch, server):
    remote = server.root / "outbound"
    (remote / "day1.hl7").write_bytes(b"\r".join(generate_mix(40, seed=8)))
    (remote / "partial.hl7.part").write_bytes(b"MSH|^~\\&|")
    ing = Ingestor(_settings(tmp_path, warehouse_url, monkeypatch, server), run_id="run-sftp")
    ing.sync_facilities()
    staged = ing.stage("HD-TSEVIE")
    assert len(staged) == 1
    assert (remote / "day1.hl7").exists(), "the remote file stays until the commit"
    [r] = ing.ingest_staged("HD-TSEVIE", staged)
    assert r.status == "done" and r.counts.messages == 40
    assert (remote / "day1.hl7").exists()
    ing.archive_staged("HD-TSEVIE", staged[0])
    assert not (remote / "day1.hl7").exists()
    assert [p.name.endswith("-day1.hl7") for p in (remote / "archive").iterdir()] == [True]
    assert (remote / "partial.hl7.part").exists()  # partial uploads are never taken


def test_a_run_uses_one_connection_to_stage_and_one_to_finish(tmp_path, warehouse_url, hl7ics_home, monkeypatch,
                                                              server):
    """One SSH connection per staged file (and one more per file finished) could be refused by a
    partner server that limits connections (MaxStartups)."""
    from hl7ics_airflow import ingest_tasks

    remote = server.root / "outbound"
    for i in range(4):
        (remote / f"day{i}.hl7").write_bytes(b"\r".join(generate_mix(5, seed=30 + i)))
    settings = _settings(tmp_path, warehouse_url, monkeypatch, server)
    ing = Ingestor(settings, run_id="run-conn")
    ing.sync_facilities()
    before = server.connections
    staged = ing.stage("HD-TSEVIE")
    assert len(staged) == 4 and server.connections - before == 1
    results = ing.ingest_staged("HD-TSEVIE", staged)
    assert all(r.status == "done" for r in results)
    before = server.connections
    monkeypatch.setattr(ingest_tasks, "_ingestor", lambda run_id: ing)
    out = ingest_tasks.archive({"facility": "HD-TSEVIE", "files": [{"sha256": s} for s in staged]}, "run-conn")
    assert out == {"facility": "HD-TSEVIE", "archived": 4} and server.connections - before == 1
    assert sorted(p.name[17:] for p in (remote / "archive").iterdir()) == [f"day{i}.hl7" for i in range(4)]


def test_a_crash_before_the_remote_move_loads_nothing_twice(tmp_path, warehouse_url, hl7ics_home, monkeypatch, server):
    remote = server.root / "outbound"
    (remote / "day2.hl7").write_bytes(b"\r".join(generate_mix(25, seed=9)))
    settings = _settings(tmp_path, warehouse_url, monkeypatch, server)
    ing, staged, _ = _load_staged(settings)
    # crash here: committed, but neither archived locally nor moved remotely; staging is lost too
    shutil.rmtree(settings.home / "staging" / "HD-TSEVIE")
    ing2 = Ingestor(settings, run_id="run-2")
    again = ing2.stage("HD-TSEVIE")
    assert again == staged  # downloaded again: same content hash
    [r] = ing2.ingest_staged("HD-TSEVIE", again)
    assert r.status == "duplicate_file"
    ing2.archive_staged("HD-TSEVIE", again[0])
    assert not (remote / "day2.hl7").exists()
    assert scalar(ing2.engine, "SELECT COUNT(*) FROM message_store") == 25


def test_a_wrong_host_key_stages_nothing(tmp_path, warehouse_url, hl7ics_home, monkeypatch, server):
    from transforms.sftp import SftpHostKeyError

    (server.root / "outbound" / "day3.hl7").write_bytes(b"\r".join(generate_mix(5, seed=10)))
    other = SftpServer(tmp_path / "other").host_key_line  # a different server's key
    ing = Ingestor(_settings(tmp_path, warehouse_url, monkeypatch, server, host_key=other), run_id="run-x")
    with pytest.raises(SftpHostKeyError):
        ing.stage("HD-TSEVIE")
    assert not list(ing.settings.home.rglob("staging/*/*.hl7"))
    assert (server.root / "outbound" / "day3.hl7").exists()


def test_a_file_that_grew_after_staging_is_not_archived_until_loaded_whole(tmp_path, warehouse_url, hl7ics_home,
                                                                         monkeypatch, server):
    """The sender was still writing when the file was staged: the remote file, now longer, is left
    in place at archiving time, and the next run loads the rest (the first part as duplicates)."""
    remote = server.root / "outbound"
    msgs = generate_mix(50, seed=10)
    (remote / "day.hl7").write_bytes(b"\r".join(msgs[:30]) + b"\r")
    ing, staged, _ = _load_staged(_settings(tmp_path, warehouse_url, monkeypatch, server))
    (remote / "day.hl7").write_bytes(b"\r".join(msgs) + b"\r")  # the sender finished writing
    ing.archive_staged("HD-TSEVIE", staged[0])
    assert (remote / "day.hl7").exists()
    again = Ingestor(ing.settings, run_id="run-2")
    staged2 = again.stage("HD-TSEVIE")
    [r] = again.ingest_staged("HD-TSEVIE", staged2)
    assert (r.counts.messages, r.counts.duplicates) == (50, 30)
    again.archive_staged("HD-TSEVIE", staged2[0])
    assert not (remote / "day.hl7").exists()
    assert scalar(ing.engine, "SELECT COUNT(*) FROM message_store WHERE status <> 'duplicate'") == 50


def test_a_remote_file_already_moved_counts_as_finished(tmp_path, warehouse_url, hl7ics_home, monkeypatch, server):
    """An attempt moved the remote file and stopped before recording it: the retry finishes
    instead of failing on the missing file at every run."""
    remote = server.root / "outbound"
    (remote / "day3.hl7").write_bytes(b"\r".join(generate_mix(10, seed=11)))
    settings = _settings(tmp_path, warehouse_url, monkeypatch, server)
    ing, staged, _ = _load_staged(settings)
    (remote / "archive").mkdir()
    (remote / "day3.hl7").rename(remote / "archive" / "day3.hl7")
    assert ing.archive_staged("HD-TSEVIE", staged[0]) is not None
    assert not list((settings.home / "staging" / "HD-TSEVIE").glob(f"{staged[0]}.*"))


def test_stable_size_leaves_a_file_still_being_written(tmp_path, warehouse_url, hl7ics_home, monkeypatch, server):
    """Stable means unchanged for stable_seconds by our own clock, between two listings: the
    server's clock said a file still being written was old when it was behind ours (both files
    here look two minutes old to it), and a finished file never looked old when it was ahead."""
    import os
    import time
    import types

    from transforms import sources

    remote = server.root / "outbound"
    (remote / "done.hl7").write_bytes(b"\r".join(generate_mix(5, seed=12)))
    (remote / "growing.hl7").write_bytes(b"\r".join(generate_mix(5, seed=13)))
    for name in ("done.hl7", "growing.hl7"):
        os.utime(remote / name, (time.time() - 120, time.time() - 120))
    clock = {"t": 1_000_000.0, "slept": []}

    def sleep(secs):  # the sender goes on writing while we wait
        clock["slept"].append(secs)
        clock["t"] += secs
        with open(remote / "growing.hl7", "ab") as fh:
            fh.write(b"\r" + generate_mix(1, seed=14)[0])
        os.utime(remote / "growing.hl7", (time.time() - 110, time.time() - 110))

    monkeypatch.setattr(sources, "time", types.SimpleNamespace(time=lambda: clock["t"], sleep=sleep))
    ing = Ingestor(_settings(tmp_path, warehouse_url, monkeypatch, server, partial_upload="stable_size",
                             stable_seconds=30), run_id="run-1")
    ing.sync_facilities()
    assert len(ing.stage("HD-TSEVIE")) == 1 and clock["slept"] == [30]
    names = [p.read_text(encoding="utf-8") for p in (ing.settings.home / "staging" / "HD-TSEVIE").glob("*.name")]
    assert names == ["done.hl7"]
    # The next run, once the sender has stopped: what the last listing saw is remembered.
    clock["t"] += 900
    monkeypatch.setattr(sources, "time", types.SimpleNamespace(time=lambda: clock["t"],
                                                               sleep=lambda s: clock["slept"].append(s)))
    ing2 = Ingestor(ing.settings, run_id="run-2")
    ing2.stage("HD-TSEVIE")
    assert clock["slept"] == [30]  # no wait this time: seen unchanged by the last listing
    names = sorted(p.read_text(encoding="utf-8") for p in (ing.settings.home / "staging" / "HD-TSEVIE").glob("*.name"))
    assert names == ["done.hl7", "growing.hl7"]


def test_each_file_is_finished_on_the_source_it_came_from(tmp_path, warehouse_url, hl7ics_home, monkeypatch, server):
    """A facility with two SFTP folders and the same file name in both: archiving the file staged
    from one folder moves that folder's file, never the other's."""
    ing = Ingestor(_with_lab_folder(tmp_path, warehouse_url, monkeypatch, server), run_id="run-1")
    ing.sync_facilities()
    staged = ing.stage("HD-TSEVIE")
    ing.ingest_staged("HD-TSEVIE", staged)
    (server.root / "outbound" / "b.hl7").write_bytes(b"\r".join(generate_mix(25, seed=15)))  # arrives meanwhile
    ing.archive_staged("HD-TSEVIE", staged[0])
    assert not (server.root / "lab" / "b.hl7").exists()
    assert [p.name.endswith("-b.hl7") for p in (server.root / "lab" / "archive").iterdir()] == [True]
    assert (server.root / "outbound" / "b.hl7").exists()


def test_two_folders_of_a_facility_download_a_file_name_to_separate_places(tmp_path, warehouse_url, hl7ics_home,
                                                                          monkeypatch, server):
    """Two SFTP folders of one facility each with a b.hl7: they shared one download cache by file
    name, so a partial download of one could be resumed with the other's bytes."""
    from transforms.sftp import SftpClient

    (server.root / "outbound" / "b.hl7").write_bytes(b"\r".join(generate_mix(12, seed=16)))
    settings = _with_lab_folder(tmp_path, warehouse_url, monkeypatch, server)
    places: dict[str, Path] = {}
    real = SftpClient.download

    def download(self, name, local_path):
        places[self.target.remote(name)] = Path(local_path)
        return real(self, name, local_path)

    monkeypatch.setattr(SftpClient, "download", download)
    ing, staged, results = _load_staged(settings)
    assert sorted(places) == ["/lab/b.hl7", "/outbound/b.hl7"]
    assert places["/lab/b.hl7"] != places["/outbound/b.hl7"]
    assert sorted(r.counts.messages for r in results) == [10, 12]


def test_a_file_replaced_with_the_same_size_stays_until_its_new_content_loads(tmp_path, warehouse_url, hl7ics_home,
                                                                               monkeypatch, server):
    """A sender re-sending a corrected file under the same name, with the same length, within the
    same second: finishing the first content must not delete the second unread."""
    import hashlib

    remote = server.root / "outbound"
    first = generate_mix(1, seed=21)[0] + b"\r"
    second = first.replace(b"|P|", b"|T|", 1)
    assert len(first) == len(second) and first != second
    (remote / "daily.hl7").write_bytes(first)
    settings = _settings(tmp_path, warehouse_url, monkeypatch, server, after="delete")
    ing, staged, _ = _load_staged(settings)
    st = (remote / "daily.hl7").stat()
    (remote / "daily.hl7").write_bytes(second)
    import os
    os.utime(remote / "daily.hl7", ns=(st.st_atime_ns, st.st_mtime_ns))  # same second, same size
    ing.archive_staged("HD-TSEVIE", staged[0])
    assert (remote / "daily.hl7").read_bytes() == second
    ing, staged, _ = _load_staged(settings, run_id="run-2")
    assert scalar(ing.engine, "SELECT COUNT(*) FROM ingested_file WHERE sha256 = :s",
                  s=hashlib.sha256(second).hexdigest()) == 1
    ing.archive_staged("HD-TSEVIE", staged[0])
    assert not (remote / "daily.hl7").exists()


def test_names_that_are_not_utf8_or_too_long_are_skipped_not_fatal(tmp_path, warehouse_url, hl7ics_home,
                                                                   monkeypatch, server):
    """One odd name in the sender's folder must not stop its other files: a name that is not
    UTF-8, or too long to download (.part) or archive (hash prefix) under 255 bytes, is left."""
    import os

    remote = server.root / "outbound"
    with open(os.path.join(os.fsencode(remote), b"caf\xe9.hl7"), "wb") as f:
        f.write(generate_mix(1, seed=1)[0])
    (remote / ("a" * 248 + ".hl7")).write_bytes(generate_mix(1, seed=2)[0])
    (remote / "normal.hl7").write_bytes(b"\r".join(generate_mix(3, seed=3)))
    long_ok = "b" * 196 + ".hl7"  # 200 bytes: still room for .part and the archive's hash prefix
    (remote / long_ok).write_bytes(b"\r".join(generate_mix(2, seed=5)))
    settings = _settings(tmp_path, warehouse_url, monkeypatch, server)
    ing, staged, results = _load_staged(settings)
    assert len(staged) == 2 and sorted(r.counts.loaded for r in results) == [2, 3]
    assert all(ing.archive_staged("HD-TSEVIE", sha) for sha in staged)
    assert not (remote / "normal.hl7").exists() and not (remote / long_ok).exists()
    assert (remote / ("a" * 248 + ".hl7")).exists()
    assert scalar(ing.engine, "SELECT COUNT(DISTINCT source) FROM message_store WHERE source = 'sftp'") == 1
    assert scalar(ing.engine, "SELECT COUNT(*) FROM message_store WHERE source <> 'sftp'") == 0


def test_the_pull_task_finds_the_sftp_connection_through_airflow(tmp_path, warehouse_url, hl7ics_home, monkeypatch,
                                                                  server):
    """A connection kept in Airflow (metadata database or a secrets backend), not in AIRFLOW_CONN_*."""
    from airflow.sdk import Connection

    (server.root / "outbound" / "x.hl7").write_bytes(b"\r".join(generate_mix(3, seed=4)))
    settings = _settings(tmp_path, warehouse_url, monkeypatch, server)
    conn = server.connection("/")
    monkeypatch.delenv("AIRFLOW_CONN_HL7ICS_SFTP_TEST")
    kept = Connection(conn_id="hl7ics_sftp_test", conn_type="sftp", host=conn["host"], port=conn["port"],
                      login=conn["login"], extra=json.dumps(conn["extra"]))
    monkeypatch.setattr(Connection, "get", classmethod(lambda cls, cid: kept if cid == "hl7ics_sftp_test" else None))
    monkeypatch.setenv("HL7ICS_CONFIG", str(settings.config_dir))
    monkeypatch.setenv("HL7ICS_WAREHOUSE_URL", warehouse_url)
    from hl7ics_airflow import ingest_tasks

    pulled = ingest_tasks.pull("HD-TSEVIE", "run-af")
    assert len(pulled["files"]) == 1
    loaded = ingest_tasks.load(pulled, "run-af")
    assert ingest_tasks.archive(loaded, "run-af")["archived"] == 1
    assert not (server.root / "outbound" / "x.hl7").exists()
