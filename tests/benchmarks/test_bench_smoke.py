"""The performance bench still works: a --quick run fills every row of its table with a number.

The bench measures speed; this test never judges it. It runs `bench/run.py --quick` (a second or
two per row, tiny counts) as a user would, on its own servers and databases, and checks the shape
of what it reports: every row measured, the table and the machine description written where it
was told, BENCHMARKS.md left alone.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"


def _load_bench() -> ModuleType:
    """bench/run.py as a module, its sibling modules importable by their plain names as when run."""
    if str(BENCH) not in sys.path:
        sys.path.append(str(BENCH))
    spec = importlib.util.spec_from_file_location("kessai_bench_run", BENCH / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Dataclasses look their module up while the class is being made.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


def _run_script(
    script: str, args: list[str], *, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run bench/SCRIPT as a user would, without our KESSAI_* settings; it must succeed."""
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=bench.harness.clean_env(),
        check=False,
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout}\n{done.stderr[-6000:]}"
    return done


ROWS = set(bench.ROW_KEYS)
# Rows whose figure is a count, a rate or a size: always above zero. (The gateway-added latency
# is a difference of two measurements and may come out at or below zero on a quiet machine.)
POSITIVE = ROWS - {"latency_added"}


@pytest.mark.timeout(900)
def test_quick_run_measures_every_row(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        pytest.fail("wrk is missing: apt-get install wrk (scripts/test does)")
    benchmarks = ROOT / "BENCHMARKS.md"
    before = benchmarks.stat().st_mtime_ns if benchmarks.exists() else None
    markdown, rows_json, work = tmp_path / "bench.md", tmp_path / "bench.json", tmp_path / "work"
    args = ["--quick", "--out", str(markdown), "--json", str(rows_json), "--workdir", str(work)]
    postgres = os.environ.get("KESSAI_TEST_POSTGRES_URL")
    if postgres:
        args += ["--postgres-url", postgres]
    # The bench's own parser reads these as a quick run of every part, writing where told.
    plan, out, json_out, workdir, keep = bench.parse_plan(args)
    assert (plan.quick, plan.skip, plan.postgres_url) == (True, frozenset(), postgres or None)
    assert (out, json_out, workdir, keep) == (markdown, rows_json, work, False)
    # Generous: on a loaded two-core machine each server takes many seconds to start.
    done = _run_script("run.py", args, timeout=840)

    report = json.loads(rows_json.read_text())
    rows = {row["key"]: row for row in report["rows"]}
    assert set(rows) == ROWS
    for key, row in rows.items():
        number = row["number"]
        assert isinstance(number, int | float) and math.isfinite(number), row
        if key in POSITIVE:
            assert number > 0, row
        assert any(ch.isdigit() for ch in row["value"]), row
    assert report["failures"] == []

    table = markdown.read_text()
    for row in rows.values():
        assert f"| {row['measure']} | {row['value']} |" in table
    for fact in ("date", "cpu", "cores", "memory", "kernel", "python", "database filesystem"):
        assert f"| {fact} | " in table
    # Where the CPU went: every throughput row's CPU, split by process group.
    assert "## Where the CPU went" in table
    assert set(report["cpu"]) == {"ceiling", "request", "postgresql"}
    for key, use in report["cpu"].items():
        assert use["answers"] > 0 and use["busy"] > 0, key
        assert use["groups"]["server"] > 0 and use["groups"]["wrk"] > 0, key
        assert f"| {rows[key]['measure'].split(' — ')[0]} | " in table
        assert "µs of CPU per" in rows[key]["note"]
    assert report["cpu"]["postgresql"]["groups"]["PostgreSQL"] > 0
    # And the server's share by thread: on SQLite the units run on the writer thread, which
    # the gateway names in the kernel; on PostgreSQL there is none.
    assert "| row | server | event loop | SQLite writer | checkpointer |" in table
    threads = {key: use["threads"] for key, use in report["cpu"].items()}
    assert threads["request"]["event loop"] > 0 and threads["request"]["SQLite writer"] > 0
    assert "SQLite writer" not in threads["postgresql"]
    assert set(threads["ceiling"]) <= {"event loop", "other threads"}
    # The table is printed too, for whoever ran the bench.
    assert f"| {rows['request']['measure']} | {rows['request']['value']} |" in done.stdout
    # A quick run never overwrites the published figures.
    after = benchmarks.stat().st_mtime_ns if benchmarks.exists() else None
    assert after == before


def test_an_open_loop_run_tells_the_p99_of_each_second() -> None:
    # Two seconds of ten requests each, due every 0.1 s; the second second has one slow answer.
    first = [0.001 * (i + 1) for i in range(10)]
    second = [0.002] * 9 + [0.050]
    run = bench.openloop.OpenLoopResult(
        scheduled=20,
        rate=10.0,
        latencies=first + second,
        due=[0.1 * i for i in range(20)],
        statuses={200: 20},
    )
    assert [round(figure, 3) for figure in run.by_second(0.99)] == [0.010, 0.050]
    assert [round(figure, 3) for figure in run.by_second(0.5)] == [0.005, 0.002]
    # A second without any answer is as slow as can be.
    gap = bench.openloop.OpenLoopResult(scheduled=2, rate=1.0, latencies=[0.001, 0.001], due=[0, 2])
    assert gap.by_second(0.99) == [0.001, math.inf, 0.001]
    # Merged runs: the second run's seconds follow the first's.
    merged = bench._merge(run, run)
    assert [round(figure, 3) for figure in merged.by_second(0.99)] == [0.010, 0.050] * 2
    # Only the latency rows print them.
    assert "p99 of each second, ms: 10.0, 50.0" in bench.describe_open_loop(run, 2, by_second=True)
    assert "each second" not in bench.describe_open_loop(run, 2)


def test_sides_measured_in_turns_alternate_and_payments_are_never_sent_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan, *_ = bench.parse_plan(["--quick"])
    driven: list[tuple[str, list[bytes], float]] = []

    def drive(
        plan: object,
        server: object,
        requests: list[bytes],
        rate: float,
        seconds: float,
        accept: object = None,
    ) -> object:
        name = server.name  # type: ignore[attr-defined]
        driven.append((name, list(requests), seconds))
        count = round(rate * seconds)
        return bench.openloop.OpenLoopResult(
            scheduled=count,
            rate=rate,
            latencies=[0.001 if name == "gateway" else 0.0005] * count,
            due=[i / rate for i in range(count)],
            statuses={200: count},
            accepted=count,
        )

    monkeypatch.setattr(bench, "_drive_open_loop", drive)
    gateway, hello = (type("S", (), {"name": name})() for name in ("gateway", "hello"))
    payments = [f"pay{i}".encode() for i in range(8)]
    greetings = [b"hi"]
    pays, greets = bench.in_turns(
        plan,
        [bench.Turns(gateway, payments, once=True), bench.Turns(hello, greetings)],
        2.0,
        4.0,
        4,
    )
    # Two requests a turn; the order of the two sides swaps every turn.
    assert [name for name, _, _ in driven] == ["gateway", "hello", "hello", "gateway"] * 2
    assert all(seconds == 1.0 for _, _, seconds in driven)
    # Each payment is sent in one turn only; the reads start over each turn.
    sent = [requests for name, requests, _ in driven if name == "gateway"]
    assert sent == [payments[0:2], payments[2:4], payments[4:6], payments[6:8]]
    assert all(requests == greetings for name, requests, _ in driven if name == "hello")
    # Each side's turns merged, in their order: four seconds each.
    assert (pays.scheduled, greets.scheduled) == (8, 8)
    assert pays.due == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]
    assert len(pays.by_second(0.99)) == 4
    # Too few payments for every turn: refused, rather than sending one twice.
    with pytest.raises(bench.BenchError, match="too few requests"):
        bench.in_turns(plan, [bench.Turns(gateway, payments[:7], once=True)], 2.0, 4.0, 4)


def test_an_open_loop_run_keeps_what_the_bench_holds_out_of_the_collectors_way() -> None:
    import gc  # noqa: PLC0415

    held = [{"code": str(n)} for n in range(10_000)]  # what the bench holds while it measures
    seen: list[int] = []

    async def measure(tag: str) -> str:
        seen.append(gc.get_freeze_count())
        await asyncio.sleep(0)
        return tag

    before = gc.get_freeze_count()
    assert bench.openloop._on_a_fresh_loop(measure)("done") == "done"
    # Frozen while the run went on, all of it given back afterwards.
    assert seen[0] >= before + len(held)
    assert gc.get_freeze_count() == before
    # What the process had frozen itself stays frozen.
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        assert bench.openloop._on_a_fresh_loop(measure)("again") == "again"
        assert gc.get_freeze_count() >= frozen
    finally:
        gc.unfreeze()


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ("postgresql://kessai@127.0.0.1:5432/postgres", "postgresql://kessai@127.0.0.1:5432/b1"),
        # A query used to be cut at its last "/": a socket folder or any option broke the URL.
        (
            "postgresql://kessai@/postgres?host=/run/postgresql&port=5433",
            "postgresql://kessai@/b1?host=/run/postgresql&port=5433",
        ),
        (
            "postgresql://u@db.example/postgres?sslmode=require",
            "postgresql://u@db.example/b1?sslmode=require",
        ),
    ],
)
def test_the_scratch_database_url_keeps_the_servers_query(server: str, expected: str) -> None:
    import harness  # noqa: PLC0415 - bench/ is on sys.path once bench/run.py is loaded

    assert harness.database_url(server, "b1") == expected


def test_cpu_use_groups_processes_and_counts_what_wrk_used_once_it_ended() -> None:
    import harness  # noqa: PLC0415 - bench/ is on sys.path once bench/run.py is loaded

    before = harness.CpuSnapshot(
        at=10.0,
        busy=100.0,
        processes={1: ("python", 5.0), 2: ("python", 7.0), 3: ("postgres", 1.0), 4: ("sshd", 2.0)},
        reaped=3.0,
    )
    after = harness.CpuSnapshot(
        at=12.0,
        busy=103.5,  # 1.75 of the cores busy over the 2 s
        # 5 started in the window (counted from 0); 4 is in no group; 2 ended, and its pid
        # number went to a new process, whose use is counted from 0, not from 2's 7 s.
        processes={
            1: ("python", 6.0),
            2: ("sleep", 0.1),
            3: ("postgres", 1.5),
            4: ("sshd", 2.2),
            5: ("postgres", 0.25),
        },
        reaped=3.5,  # wrk, ended and waited for meanwhile
    )

    def classify(pid: int, name: str) -> str | None:
        if pid in {1, 2}:
            return "server"
        return "PostgreSQL" if name == "postgres" else None

    use = harness.cpu_use(before, after, classify, reaped="wrk")
    assert use.seconds == 2.0 and use.busy == 3.5 and use.cores_busy() == 1.75
    assert use.groups == pytest.approx({"server": 1.1, "PostgreSQL": 0.75, "wrk": 0.5})
    assert use.other == pytest.approx(1.15)
    per = use.per_answer_us(1000)
    assert per == pytest.approx(
        {"all": 3500.0, "server": 1100.0, "PostgreSQL": 750.0, "wrk": 500.0, "other": 1150.0}
    )
    assert use.per_answer_us(0) == {}
    assert "3,500 µs of CPU per payment (server 1,100, PostgreSQL 750, wrk 500, other 1,150)" in (
        use.text(1000, "payment")
    )


def test_a_snapshot_of_this_machine_sees_this_process_use_cpu() -> None:
    import harness  # noqa: PLC0415 - bench/ is on sys.path once bench/run.py is loaded

    first = harness.cpu_snapshot()
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:  # burn a fifth of a second of CPU
        pass
    second = harness.cpu_snapshot()
    mine = os.getpid()
    assert first.processes[mine][0] == second.processes[mine][0]
    used = second.processes[mine][1] - first.processes[mine][1]
    assert used >= 0.1
    assert second.busy - first.busy >= 0.1


def test_threads_count_by_role_and_a_thread_counts_from_when_it_was_first_seen() -> None:
    import harness  # noqa: PLC0415 - bench/ is on sys.path once bench/run.py is loaded

    assert harness.thread_role(10, 10, "python") == "event loop"
    assert harness.thread_role(10, 11, "kessai-db") == "SQLite writer"
    assert harness.thread_role(10, 12, "kessai-ckpt") == "checkpointer"
    assert harness.thread_role(10, 13, "python") == "other threads"
    before = {(10, 10): ("event loop", 5.0), (10, 11): ("SQLite writer", 2.0)}
    after = {
        (10, 10): ("event loop", 6.5),
        (10, 11): ("SQLite writer", 2.25),
        (10, 12): ("checkpointer", 0.5),  # started within the window
        (20, 20): ("event loop", 1.0),
    }
    assert harness.thread_use(before, after) == {
        "event loop": 2.5,
        "SQLite writer": 0.25,
        "checkpointer": 0.5,
    }


def test_a_thread_snapshot_sees_this_process_and_a_named_thread() -> None:
    import harness  # noqa: PLC0415 - bench/ is on sys.path once bench/run.py is loaded

    from kessai.adapters.db import name_os_thread  # noqa: PLC0415

    ready, done = threading.Event(), threading.Event()
    native: list[int] = []

    def writer() -> None:
        name_os_thread("kessai-db")
        native.append(threading.get_native_id())
        ready.set()
        done.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        ready.wait(10)
        snapshot = harness.thread_snapshot([os.getpid()])
    finally:
        done.set()
        thread.join()
    assert snapshot[os.getpid(), os.getpid()][0] == "event loop"
    assert snapshot[os.getpid(), native[0]][0] == "SQLite writer"


def test_a_hotspots_profile_reads_py_spys_stacks_by_thread() -> None:
    import hotspots  # noqa: PLC0415 - bench/ is on sys.path once bench/run.py is loaded

    lines = [
        "thread (11): MainThread;<module> (<string>:1);Runner.run (asyncio/runners.py:118) 6",
        "thread (11): MainThread;<module> (<string>:1);Runner.run (asyncio/runners.py:118);"
        "Front.__call__ (kessai/api/express.py:213) 3",
        "thread (12): kessai-db;Thread.run (threading.py:982);unit (kessai/service/gateway.py:380);"
        "Hot.run (kessai/adapters/hot.py:160) 4",
        "thread (12): kessai-db;Thread.run (threading.py:982);unit (kessai/service/gateway.py:401);"
        "unit (kessai/service/gateway.py:380);Hot.run (kessai/adapters/hot.py:161) 1",
        "thread (21): MainThread;<module> (<string>:1);Runner.run (asyncio/runners.py:120) 1",
        "not a stack line",
    ]
    profiles = hotspots.read_profiles(lines)
    assert set(profiles) == {"event loop", "writer"}
    loop, writer = profiles["event loop"], profiles["writer"]
    # Both workers' event loops are summed; line numbers are dropped.
    assert loop.samples == 10
    assert loop.own["Runner.run (asyncio/runners.py)"] == 7
    assert loop.within["Runner.run (asyncio/runners.py)"] == 10
    assert loop.own["Front.__call__ (api/express.py)"] == 3
    # A function twice in one stack counts once for that stack.
    assert writer.samples == 5
    assert writer.within["unit (service/gateway.py)"] == 5
    assert writer.own["Hot.run (adapters/hot.py)"] == 5
    text = hotspots.table(writer, 3)
    assert "100.0% Hot.run (adapters/hot.py)" in text
    # A frame under every sample that does nothing itself is no news: left out of "incl.".
    assert "Thread.run" not in text.split("incl.")[1]


@pytest.mark.timeout(600)
def test_hotspots_profiles_the_serving_workers_under_load() -> None:
    done = _run_script("hotspots.py", ["--rate", "200", "--seconds", "2"], timeout=540)
    out = done.stdout
    assert "400 sent, 400 answered with HTTP 200" in out
    assert "µs of CPU per payment (" in out and "server" in out
    for role in ("== event loop:", "== writer:"):
        assert role in out
    # The writer's samples lead to the payment's unit of work.
    writer = out.split("== writer:")[1]
    assert "_new_payment_unit.<locals>.unit (service/gateway.py)" in writer


@pytest.mark.timeout(600)
def test_hotspots_profiles_the_workers_on_postgresql() -> None:
    postgres = os.environ.get("KESSAI_TEST_POSTGRES_URL")
    if not postgres:
        pytest.skip("KESSAI_TEST_POSTGRES_URL is not set (scripts/test sets it)")
    # Long lists: in two seconds at 100/s the unit's share of the samples is small, and where it
    # ranks among the framework's frames varies from run to run.
    args = ["--rate", "100", "--seconds", "2", "--top", "200", "--postgres", postgres, "--native"]
    done = _run_script("hotspots.py", args, timeout=540)
    out = done.stdout
    assert "200 sent, 200 answered with HTTP 200" in out
    # With --native the C frames are sampled too: the C library's system calls among them.
    assert "(libc.so" in out
    # PostgreSQL's own processes are counted apart from the gateway's.
    shares = out.split("µs of CPU per payment (")[1].splitlines()[0]
    found = re.search(r"PostgreSQL ([\d,]+)", shares)
    assert found is not None and int(found[1].replace(",", "")) > 0, shares
    # No writer thread on PostgreSQL: the unit runs from the event loop.
    assert "== event loop:" in out and "== writer:" not in out
    assert "_new_payment_unit.<locals>.unit (service/gateway.py)" in out.split("incl.")[1]


def _group(queued: list[float], base: float, *, size_ms: float = 1.0) -> dict[str, object]:
    """A group as bench/phasehook writes it: stamps ``size_ms`` apart from ``base`` (seconds)."""
    step = size_ms / 1000
    return {
        "queued": queued,
        "taken": base + step,
        "locked": base + 2 * step,
        "locked_cpu": 10.0,
        "unlocking": base + 3 * step,
        "unlocking_cpu": 10.0 + step / 2,
        "unlocked": base + 3 * step,
        "flushed": base + 4 * step,
        "answered": base + 5 * step,
    }


def _units_figures(out: str, kind: str) -> list[int]:
    """The per-turn CPU figures of bench/units.py's line for ``kind``; each above zero."""
    found = re.search(
        rf"REQUEST without HTTP on {kind}, .* CPU per payment ([\d, ]+) µs; median", out
    )
    assert found is not None, out
    figures = [int(part) for part in found[1].split(", ")]
    assert figures and all(figure > 0 for figure in figures), figures
    return figures


@pytest.mark.timeout(600)
def test_units_measures_the_service_code_per_payment_and_profiles_it() -> None:
    args = ["--payments", "60", "--turns", "2", "--concurrency", "8", "--profile", "60"]
    out = _run_script("units.py", args, timeout=540).stdout
    assert len(_units_figures(out, "SQLite")) == 2
    # Split by thread: the units ran on the writer thread, its checkpoints on their own.
    split = re.search(
        r"by thread, median µs per payment: event loop (\d+), SQLite writer (\d+)", out
    )
    assert split is not None and int(split[1]) > 0 and int(split[2]) > 0, out
    # Measured as in a serving worker, whose startup objects the collector no longer walks.
    frozen = re.search(r"([\d,]+) objects of the setup frozen", out)
    assert frozen is not None and int(frozen[1].replace(",", "")) > 10_000, out
    # cProfile's tables, from the writer thread: the payment's unit of work among them.
    assert "Ordered by: internal time" in out and "Ordered by: cumulative time" in out
    assert "gateway.py" in out and "(unit)" in out


@pytest.mark.timeout(600)
def test_units_measures_on_postgresql() -> None:
    postgres = os.environ.get("KESSAI_TEST_POSTGRES_URL")
    if not postgres:
        pytest.skip("KESSAI_TEST_POSTGRES_URL is not set (scripts/test sets it)")
    args = ["--payments", "60", "--turns", "1", "--concurrency", "8", "--postgres", postgres]
    out = _run_script("units.py", args, timeout=540).stdout
    assert len(_units_figures(out, "PostgreSQL")) == 1
    # No writer thread: the units run on the event loop's.
    split = re.search(r"by thread, median µs per payment: event loop [1-9].*", out)
    assert split is not None and "SQLite writer" not in split[0], out
    batched = re.search(r"sent to PostgreSQL (\d+\.\d) at a time", out)
    assert batched is not None and float(batched[1]) >= 1.0, out


def test_the_phases_of_a_payment_add_up_to_its_time_in_the_gateway() -> None:
    import phases  # noqa: PLC0415 - bench/ is on sys.path once bench/run.py is loaded

    lines = [
        json.dumps(_group([100.0, 100.0005], 100.0)),
        json.dumps(_group([200.0], 200.0, size_ms=3.0)),
        json.dumps({"checkpoint": [200.001, 200.002]}),
        # After the first payment was queued, before the fastest one: still in the window.
        json.dumps({"checkpoint": [100.0002, 100.0003]}),
        # Read-only (no lock stamps), queued outside the window, never answered: left out.
        json.dumps({"queued": [100.1], "taken": 100.2, "flushed": 100.3, "answered": 100.4}),
        json.dumps(_group([50.0], 50.0)),
        json.dumps({k: v for k, v in _group([150.0], 150.0).items() if k != "answered"}),
    ]
    groups, checkpoints = phases.read_records(lines)
    assert checkpoints == [(200.001, 200.002), (100.0002, 100.0003)]
    found = phases.payments(groups, 60.0, 300.0)
    # Sorted by time in the gateway: the unit queued half a millisecond after its group's first.
    assert [round(p.total * 1000, 3) for p in found] == [4.5, 5.0, 15.0]
    for payment in found:
        parts = sum(
            payment.phase(start, end) for name, start, end in phases.PHASES if "CPU" not in name
        )
        assert math.isclose(parts, payment.total)
    text = phases.report(found, checkpoints)
    assert "3 payments" in text
    assert "| queued | 1.50 | " in text  # (1 + 0.5 + 3) / 3 ms over all
    assert "|   of which the writer's CPU | 0.83 | " in text
    assert "| units in its group | 1.7 | " in text
    # The slow one overlapped the later checkpoint, the first one queued the earlier one.
    assert "| overlapped a checkpoint | 67 % | 100 % | 100 % |" in text
    assert "checkpoints in the window: 2, 0.55 ms on average, longest 1.00 ms" in text
    # Seconds counted from the first payment queued: the two at 100 s, the slow one 100 s later.
    assert "in-gateway p99 by second of the window, ms — 0: 5.00, 100: 15.00" in text
    assert phases.report([], []) == "no timed payments in the window"
    # A unit that joined its group while the group waited for the lock (queued after the group
    # was taken up): it waited for the lock from its own queuing, and for nothing before.
    joined = phases.payments(
        phases.read_records([json.dumps(_group([300.0, 300.0015], 300.0))])[0], 0, 400
    )
    late = max(joined, key=lambda payment: payment.queued)
    assert late.phase("queued", "taken") == 0
    assert math.isclose(late.phase("taken", "locked"), 0.0005)
    assert math.isclose(
        sum(late.phase(s, e) for n, s, e in phases.PHASES if "CPU" not in n), late.total
    )


@pytest.mark.timeout(600)
def test_phases_times_every_payment_of_a_short_run() -> None:
    # After untimed payments, with codes never used, as in the full bench's latency row.
    args = ["--rate", "200", "--seconds", "2", "--before", "300", "--spare", "100"]
    done = _run_script("phases.py", args, timeout=540)
    out = done.stdout
    assert "400 sent, 400 answered with HTTP 200" in out
    # The hook in the server's workers timed every one of them (and only them), in every phase.
    assert "400 payments, queued for the writer thread" in out
    for row in ("| queued |", "| lock wait |", "| under the lock |", "| WAL flush |", "| answer |"):
        assert row in out


def test_ab_compares_round_by_round_with_a_sign_test() -> None:
    import ab  # noqa: PLC0415 - bench/ is on sys.path once bench/run.py is loaded
    import openloop  # noqa: PLC0415

    # Every split of 10 is as likely as its mirror; 10-0 happens twice in 1,024.
    assert ab.sign_test(10, 0) == ab.sign_test(0, 10) == 2 / 1024
    assert ab.sign_test(5, 5) == 1.0
    assert ab.sign_test(0, 0) == 1.0
    assert math.isclose(ab.sign_test(7, 3), 2 * (1 + 10 + 45 + 120) / 1024)
    # Ties count for neither side; the ratio is B's figure over A's, round by round.
    a, b = [2.0, 4.0, 3.0, 1.0], [1.0, 2.0, 3.0, 1.5]
    assert ab.compare(a, b) == (
        "B/A median 0.750; B better in 2 of 4 rounds, worse in 1 (sign test p = 1.000)"
    )
    # For a rate, more is better.
    assert ab.compare(a, b, higher_is_better=True).startswith(
        "B/A median 0.750; B better in 1 of 4 rounds, worse in 2"
    )

    slices = {name: ab.Slices() for name in ab.BUILDS}
    for name, latencies in (("A", [0.002, 0.004]), ("B", [0.001])):
        result = openloop.OpenLoopResult(scheduled=2, rate=1.0, latencies=latencies)
        result.statuses = {200: len(latencies)}
        slices[name].add_open_loop(result)
    text = ab.report(slices, {"A": Path("/a"), "B": Path("/b")}, throughput=False)
    assert "| 1 | 2.00 | 1.00 | 4.00 | unanswered |" in text
    assert "A, all slices together: p50 / p99 / p99.9 2.00 / 4.00 / 4.00 ms; 0 unanswered" in text
    assert "B, all slices together: p50 / p99 / p99.9 1.00 / 1.00 / 1.00 ms; 1 unanswered" in text

    slices = {name: ab.Slices() for name in ab.BUILDS}
    for name, answers, exhausted in (("A", 4000, 0), ("B", 5000, 2)):
        slices[name].add_wrk(
            bench.harness.WrkResult(
                requests=answers,
                seconds=1.0,
                sent=answers,
                threads_exhausted=exhausted,
                socket_errors=0,
                status_errors=0,
                timeouts=0,
                p50_ms=1,
                p99_ms=2,
                p999_ms=3,
            )
        )
    text = ab.report(slices, {"A": Path("/a"), "B": Path("/b")}, throughput=True)
    assert "| 1 | 4,000 | 5,000 |" in text
    assert "REQUEST/s: B/A median 1.250; B better in 1 of 1 rounds, worse in 0" in text
    assert "B, all slices: mean 5,000/s; 0 answers of 400 or more" in text
    assert "1 slices ran out of codes (floors)" in text


def test_ab_refuses_what_it_cannot_compare(tmp_path: Path) -> None:
    import ab  # noqa: PLC0415

    src = str(ROOT / "src")
    for args in (
        ["--b", str(tmp_path)],  # no kessai package in it
        ["--b", src, "--rounds", "0"],
        ["--b", src, "--slice", "0"],
        ["--b", src, "--before", "-1"],
        ["--b", src, "--b-env", "KESSAI_PIN_WORKERS"],  # no value
        ["--b", src, "--a-env", "=false"],  # no name
    ):
        with pytest.raises(SystemExit) as refused:
            ab.parse(args)
        assert refused.value.code == 2, args
    assert ab.parse(["--b", src]).b == Path(src)
    # A setting is a build too: the same src, one variable more in B's environment.
    parsed = ab.parse(["--b", src, "--b-env", "KESSAI_PIN_WORKERS=false", "--b-env", "X=a=b"])
    assert (parsed.a_env, parsed.b_env) == ({}, {"KESSAI_PIN_WORKERS": "false", "X": "a=b"})


@pytest.mark.timeout(600)
def test_ab_serves_two_builds_and_drives_them_in_turn() -> None:
    src = str(ROOT / "src")
    args = ["--b", src, "--rate", "200", "--slice", "0.5", "--rounds", "2", "--before", "50"]
    args += ["--b-env", "KESSAI_PIN_WORKERS=false"]
    out = _run_script("ab.py", args, timeout=540).stdout
    assert f"A: {src}\nB: {src} KESSAI_PIN_WORKERS=false" in out
    assert re.search(r"^\| 2 \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \|$", out, re.MULTILINE)
    assert "p50: B/A median " in out and "p99: B/A median " in out
    # Every payment of every slice answered: 2 rounds × 100 on each build.
    for name in ("A", "B"):
        assert re.search(
            rf"^{name}, all slices together: .* ms; 0 unanswered, 0 answers other than 200$",
            out,
            re.MULTILINE,
        )


@pytest.mark.timeout(600)
def test_ab_compares_throughput_with_wrk() -> None:
    if not bench.harness.wrk_available():
        pytest.skip("wrk is not installed (scripts/test installs it)")
    args = ["--b", str(ROOT / "src"), "--throughput", "--slice", "1", "--rounds", "2"]
    out = _run_script("ab.py", [*args, "--before", "50"], timeout=540).stdout
    assert re.search(r"^\| 2 \| [\d,]+ \| [\d,]+ \|$", out, re.MULTILINE), out
    assert "REQUEST/s: B/A median " in out
    for name in ("A", "B"):
        assert re.search(
            rf"^{name}, all slices: mean [\d,]+/s; 0 answers of 400 or more", out, re.M
        )
