"""storage-cleanup orphan scan at scale: where the time goes, and peak memory.

A `trip-media` bucket of OBJECTS files (90% referenced, 7.5% old orphans, 2.5% stale temp
uploads) against ~REFS referencing rows on PostgreSQL (trip media, documents, receipts
from bench/generate.py; every other reference source of app/voyagesmart/file_references.py is read
too, empty here).  Each variant runs in its own process so its
peak RSS is its own:

- `baseline`: the obvious way — fetchall() every URL into a set of full strings, then walk
  the bucket and classify (no deletes);
- `job`: the real job through the runner (streamed hashed reference set, paginated listing,
  spooled candidates, batched moves into the quarantine), forced past nothing: the moves
  are 10% of the bucket.

    .venv/bin/python -m bench.storage_cleanup                     # local, 200,000 objects
    .venv/bin/python -m bench.storage_cleanup --backend s3 --objects 10000   # moto_server
    .venv/bin/python -m bench.storage_cleanup --part chunks       # whole run vs 30 s calls

Prints one line per variant and the ratios job / baseline.

`--part chunks` compares instead, on two identical copies of the local bucket, the job
run whole (one call) against the job under FUNCTION_MAX_DURATION=30 (`--budget`), called
again until it is no longer `partial`, as a crontab loop would: the total wall time ratio
(target 1.15 at most) and whether both end in the same state (every object, the
quarantine with the run's folder named alike, the report's figures).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.generate import bench_database, documents, expenses, trip_media, trips, users

BUCKET = "trip-media"
MEDIA_PER_TRIP = 7


def _keys(objects: int) -> tuple[list[str], list[str], list[str]]:
    referenced_n = int(objects * 0.9)
    orphan_n = int(objects * 0.075)
    temp_n = objects - referenced_n - orphan_n
    referenced = [f"{1 + i // MEDIA_PER_TRIP}/{1 + i % MEDIA_PER_TRIP}.jpg"
                  for i in range(referenced_n)]
    orphans = [f"orphans/{i}.jpg" for i in range(orphan_n)]
    temp = [f"tmp/{i}.bin" for i in range(temp_n)]
    return referenced, orphans, temp


def _fill_database(url: str, refs: int, now: dt.datetime) -> int:
    from app.db import make_engine

    # ~70% trip media, 20% documents, 10% receipts (avatars are typed URLs, not files).
    trips_n = max(1, int(refs * 0.7) // MEDIA_PER_TRIP)
    users_n = max(1, refs // 10)
    engine = make_engine(url)
    with engine.begin() as conn:
        users(conn, users_n, now=now)
        trips(conn, trips_n, users_n, now=now)
        total = trip_media(conn, trips_n, MEDIA_PER_TRIP, users_n, now=now)
        total += documents(conn, trips_n, 2, users_n, now=now)
        expenses(conn, trips_n, 2, users_n, now=now)
        total += trips_n  # expenses: half of 2 per trip carry a receipt
    engine.dispose()
    return total


def _fill_local(root: Path, objects: int) -> None:
    referenced, orphans, temp = _keys(objects)
    base = root / BUCKET
    body = b"\xff\xd8 bench object \xff\xd9"
    for key in (*referenced, *orphans, *temp):
        path = base / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)


def _fill_s3(settings: Any, objects: int) -> None:
    from app.adapters.storage import S3Storage

    client = S3Storage.from_settings(settings).client
    client.create_bucket(Bucket=BUCKET)
    referenced, orphans, temp = _keys(objects)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=BUCKET, Key=k, Body=b"x" * 16),
                      (*referenced, *orphans, *temp)))


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _variant(name: str, url: str, overrides: dict[str, Any], now: dt.datetime,
             budget: float = 30.0) -> dict[str, Any]:
    from app.config import Settings
    from app.db import make_engine

    settings = Settings(_env_file=None, app_env="test", database_url=url,  # type: ignore[call-arg]
                        storage_buckets=BUCKET, storage_cleanup_delete_brake_share=0.2,
                        storage_recompress_min_bytes=10**12, **overrides)
    engine = make_engine(url)
    started = time.monotonic()
    if name == "baseline":
        out = _baseline(settings, engine, now)
    elif name in ("whole", "cut"):
        out = _chunked(settings, engine, now, budget if name == "cut" else None)
    else:
        from app.core.runner import Runner

        outcome = Runner(settings, engine, clock=lambda: now).run(
            "storage-cleanup", trigger="cli")
        assert outcome.status == "success", outcome.message
        bucket = outcome.details["buckets"][0]
        out = {"timings": outcome.details["timings"], "scanned": bucket["scanned"],
               "deleted": bucket["temp_deleted"] + bucket["orphans_deleted"],
               "reference_rows": outcome.details["reference_rows"]}
    out["total_s"] = round(time.monotonic() - started, 2)
    out["peak_rss_mb"] = round(_peak_mb(), 1)
    engine.dispose()
    return out


def _chunked(settings: Any, engine: Any, now: dt.datetime, budget: float | None
             ) -> dict[str, Any]:
    """The job whole, or under a budget per call and called until it is not `partial`."""
    from app.core.runner import Runner

    if budget is not None:
        settings = settings.model_copy(update={"function_max_duration": budget})
    root = Path(settings.storage_local_root)
    # Both copies start with their files' metadata in the page cache: the copy just
    # written would otherwise list faster than the original.
    for _dirpath, _dirs, files in os.walk(root / BUCKET):
        for name in files:
            os.stat(os.path.join(_dirpath, name))
    runner = Runner(settings, engine, clock=lambda: now)
    calls = []
    while True:
        started = time.monotonic()
        outcome = runner.run("storage-cleanup", trigger="cli")
        calls.append(round(time.monotonic() - started, 2))
        if outcome.status != "partial":
            break
    assert outcome.status == "success", outcome.message
    figures = [{k: v for k, v in bucket.items()} for bucket in outcome.details["buckets"]]
    folder = outcome.details["quarantine"]["folder"]
    state = sorted((str(path.relative_to(root)).replace(folder, "<run>/"), path.stat().st_size)
                   for path in (root / BUCKET).rglob("*") if path.is_file())
    import sqlalchemy as sa

    with engine.connect() as conn:
        logged = conn.execute(sa.text(
            "SELECT status, records_processed, chunks_done, chunks_total FROM cron_job_log "
            "WHERE run_id = :r"), {"r": str(outcome.run_id)}).one()
    return {"calls": calls, "records": outcome.records_processed,
            "log": [str(v) for v in logged],
            "state": hashlib.sha256(json.dumps([state, figures], sort_keys=True).encode()
                                    ).hexdigest()[:16],
            "objects_after": len(state)}


def _baseline(settings: Any, engine: Any, now: dt.datetime) -> dict[str, Any]:
    import sqlalchemy as sa

    from app.adapters.storage import storage_from_settings
    from app.jobs.storage_cleanup import _reference_query
    from app.voyagesmart.file_references import SOURCES, read_reference, values_in

    started = time.monotonic()
    with engine.connect() as conn:
        urls = [url for source in SOURCES
                for value in conn.execute(_reference_query(source)).scalars().all()
                for url in values_in(source.kind, value) if isinstance(url, str)]
    refs = {name for u in urls for name in read_reference(u, [BUCKET]).names}
    reference_s = time.monotonic() - started
    started = time.monotonic()
    storage = storage_from_settings(settings)
    orphan_before = now - dt.timedelta(days=settings.storage_orphan_min_age_days)
    to_delete = []
    scanned = 0
    for obj in storage.list(BUCKET):
        scanned += 1
        if obj.key.startswith("tmp/") or (
                (BUCKET, obj.key) not in refs and obj.last_modified < orphan_before):
            to_delete.append(obj.key)
    del sa
    return {"timings": {"reference_set_s": round(reference_s, 3),
                        "listing_s": round(time.monotonic() - started, 3)},
            "scanned": scanned, "would_delete": len(to_delete), "reference_rows": len(urls)}


def _child(variant: str, url: str, overrides: dict[str, Any], now: dt.datetime,
           budget: float) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.storage_cleanup", "--variant", variant, "--url", url,
         "--overrides", json.dumps(overrides), "--now", now.isoformat(),
         "--budget", str(budget)],
        check=True, capture_output=True, text=True, env={**os.environ, "APP_ENV": "test"})
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _compare_chunked(url: str, workdir: Path, overrides: dict[str, Any], now: dt.datetime,
                     budget: float) -> None:
    """The same bucket twice (the copy keeps modification times): whole, then cut."""
    started = time.monotonic()
    shutil.copytree(workdir / BUCKET, workdir / "copy" / BUCKET)
    print(f"copied the bucket in {time.monotonic() - started:.1f}s")
    whole = _child("whole", url, overrides, now, budget)
    cut = _child("cut", url, {**overrides, "storage_local_root": str(workdir / "copy")},
                 now, budget)
    for name, result in (("whole", whole), ("cut", cut)):
        print(f"{name:6s} calls {len(result['calls'])} ({', '.join(map(str, result['calls']))} s)"
              f", records {result['records']}, log "
              f"{result['log']}, objects after {result['objects_after']}, peak RSS "
              f"{result['peak_rss_mb']} MB")
    ratio = sum(cut["calls"]) / sum(whole["calls"])
    same = (whole["state"], whole["records"]) == (cut["state"], cut["records"])
    print(f"ratio cut/whole wall time of the calls: {ratio:.2f} (target <= 1.15); end states "
          f"{'match' if same else 'DIFFER'}")
    print("PASS" if ratio <= 1.15 and same and len(cut["calls"]) > 1 else "FAIL")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=200_000)
    parser.add_argument("--refs", type=int, default=500_000)
    parser.add_argument("--backend", choices=["local", "s3"], default="local")
    parser.add_argument("--part", choices=["scan", "chunks"], default="scan")
    parser.add_argument("--budget", type=float, default=30.0,
                        help="FUNCTION_MAX_DURATION of the cut run (--part chunks)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--overrides", help=argparse.SUPPRESS)
    parser.add_argument("--now", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.variant:  # child process: run one variant, print JSON
        result = _variant(args.variant, args.url, json.loads(args.overrides),
                          dt.datetime.fromisoformat(args.now), args.budget)
        print(json.dumps(result))
        return

    # Everything is "old": the run happens 400 days after the data was made.
    made = dt.datetime.now(dt.UTC)
    now = made + dt.timedelta(days=400)
    workdir = Path(tempfile.mkdtemp(prefix="vsc-bench-storage-"))
    moto: subprocess.Popen[bytes] | None = None
    try:
        with bench_database("storage") as url:
            started = time.monotonic()
            rows = _fill_database(url, args.refs, made)
            print(f"database: {rows} referencing rows in {time.monotonic() - started:.1f}s")
            started = time.monotonic()
            if args.backend == "local":
                overrides: dict[str, Any] = {"storage_backend": "local",
                                             "storage_local_root": str(workdir)}
                _fill_local(workdir, args.objects)
            else:
                from tests.support.servers import free_port

                port = free_port()
                moto = subprocess.Popen(
                    [str(Path(sys.executable).with_name("moto_server")), "-p", str(port)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(2)
                overrides = {"storage_backend": "s3", "s3_endpoint_url": f"http://127.0.0.1:{port}",
                             "s3_access_key_id": "bench", "s3_secret_access_key": "bench"}
                from app.config import Settings

                _fill_s3(Settings(_env_file=None, app_env="test", **overrides),  # type: ignore[call-arg]
                         args.objects)
            print(f"bucket ({args.backend}): {args.objects} objects in "
                  f"{time.monotonic() - started:.1f}s")
            if args.part == "chunks":
                if args.backend != "local":
                    raise SystemExit("--part chunks copies the bucket: local backend only")
                _compare_chunked(url, workdir, overrides, now, args.budget)
                return
            results = {}
            for variant in ("baseline", "job"):
                out = subprocess.run(
                    [sys.executable, "-m", "bench.storage_cleanup", "--variant", variant,
                     "--url", url, "--overrides", json.dumps(overrides), "--now",
                     now.isoformat()],
                    check=True, capture_output=True, text=True,
                    env={**os.environ, "APP_ENV": "test"})
                results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{variant:9s} {json.dumps(results[variant])}")
            base, job = results["baseline"], results["job"]
            print(f"ratio job/baseline: time {job['total_s'] / base['total_s']:.2f} "
                  f"(job includes {job['deleted']} deletes), peak RSS "
                  f"{job['peak_rss_mb'] / base['peak_rss_mb']:.2f}")
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
