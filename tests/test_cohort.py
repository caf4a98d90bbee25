"""Cohorts (idc_engine/slides/cohort*.py): slides given as files, directories and @lists, one
output folder per slide, shards, locks, attempts, reruns after kill -9, two workers on one list,
the cohort table; with real worker processes on pyramidal TIFFs and OpenSlide's own test files."""

import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import benchmark_events
import pytest
import slide_files

from idc_engine.slides import cohort as cohort_module
from idc_engine.slides import (
    cohort_inputs,
    cohort_locks,
    cohort_progress,
    cohort_shards,
    cohort_table,
    outputs,
)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "openslide")
BROKEN = os.path.join(FIXTURES, "unopenable.tiff")


# --- inputs ------------------------------------------------------------------------------------

def _touch(path) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").close()
    return str(path)


def test_files_directories_and_lists_give_each_slide_once_in_order(tmp_path):
    a = _touch(tmp_path / "a" / "1.svs")
    b = _touch(tmp_path / "b" / "1.svs")
    nested = _touch(tmp_path / "a" / "deeper" / "2.ndpi")
    dicom = [_touch(tmp_path / "a" / "dicom" / f"level_{i}.dcm") for i in range(3)]
    _touch(tmp_path / "a" / "notes.txt")
    _touch(tmp_path / "a" / ".hidden.svs")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "inner.txt").write_text("../b/1.svs\n")
    (tmp_path / "lists" / "outer.txt").write_text("# cohort\n\n../a/1.svs\n@inner.txt\n")
    missing = str(tmp_path / "gone.svs")
    found = cohort_inputs.expand_slides([f"@{tmp_path / 'lists' / 'outer.txt'}",
                                         str(tmp_path / "a"), b, missing])
    # the list's two, then the directory's own, folders sorted (its 1.svs already taken, one
    # .dcm for the DICOM folder), b once, the missing file kept: its error comes per slide
    assert found == [a, b, nested, dicom[0], missing]


def test_a_directory_without_slides_and_a_list_that_lists_itself_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(cohort_inputs.SlideInputError, match="empty: a directory with no slide"):
        cohort_inputs.expand_slides([str(tmp_path / "empty")])
    (tmp_path / "loop.txt").write_text("@loop.txt\n")
    with pytest.raises(cohort_inputs.SlideInputError, match="lists itself"):
        cohort_inputs.expand_slides([f"@{tmp_path / 'loop.txt'}"])
    with pytest.raises(cohort_inputs.SlideInputError, match="cannot read the list file"):
        cohort_inputs.expand_slides([f"@{tmp_path / 'absent.txt'}"])


# --- shards ------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag,num_shards,environ,expected", [
    ("1/3", 0, {}, (1, 3)),
    ("", 0, {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1",
             "SLURM_ARRAY_TASK_COUNT": "8"}, (4, 8)),
    ("", 0, {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2"}, (0, 2)),
    ("", 4, {"JOB_COMPLETION_INDEX": "3"}, (3, 4)),
    ("2/4", 0, {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2"}, (2, 4)),
    ("", 0, {}, (0, 1))])
def test_the_shard_comes_from_the_flag_or_the_scheduler(flag, num_shards, environ, expected):
    shard = cohort_shards.resolve_shard(flag, num_shards, environ)
    assert (shard.index, shard.count) == expected


@pytest.mark.parametrize("flag,num_shards,environ,message", [
    ("3/3", 0, {}, "shard 3 of 3 does not exist"),
    ("1-3", 0, {}, "give I/N"),
    ("", 0, {"JOB_COMPLETION_INDEX": "1"}, "needs --num_shards"),
    ("", 0, {"SLURM_ARRAY_TASK_ID": "1"}, "without SLURM_ARRAY_TASK_COUNT"),
    ("", 0, {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "2",
             "SLURM_ARRAY_TASK_STEP": "2"}, "SLURM_ARRAY_TASK_STEP=2"),
    ("", 3, {}, "--num_shards=3 without --shard")])
def test_a_shard_that_does_not_exist_is_refused(flag, num_shards, environ, message):
    with pytest.raises(cohort_shards.ShardError, match=message):
        cohort_shards.resolve_shard(flag, num_shards, environ)


def test_the_shards_are_disjoint_and_cover_the_list():
    slides = [f"s{i}" for i in range(11)]
    taken = [cohort_shards.Shard(i, 4, "").take(slides) for i in range(4)]
    assert sorted(s for shard in taken for s in shard) == sorted(slides)
    assert sorted(len(shard) for shard in taken) == [2, 3, 3, 3]


# --- names and locks ---------------------------------------------------------------------------

def test_slides_of_one_file_name_get_their_own_folders_on_every_run(tmp_path):
    out = str(tmp_path / "out")
    first = cohort_locks.claim_name(out, "/data/a/1.svs")
    second = cohort_locks.claim_name(out, "/data/b/1.svs")
    assert (first, second) == ("1", "1_2")
    assert cohort_locks.claim_name(out, "/data/tensorboard.svs") == "tensorboard_2"  # OUT's own
    assert cohort_locks.claim_name(out, "/data/b/1.svs") == "1_2"  # a rerun, either order
    assert cohort_locks.claim_name(out, "/data/a/1.svs") == "1"


def test_concurrent_claims_of_one_file_name_give_distinct_names(tmp_path):
    out, names, start = str(tmp_path / "out"), {}, threading.Barrier(8)

    def claim(i):
        start.wait()
        names[i] = cohort_locks.claim_name(out, f"/data/{i}/scan.svs")

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(names.values()) == sorted(["scan"] + [f"scan_{n}" for n in range(2, 9)])


def test_a_held_lock_keeps_others_off_until_released_or_expired(tmp_path):
    out = str(tmp_path)
    holder = cohort_locks.SlideLock(out, "s", expiry_seconds=2)
    assert holder.acquire()
    assert not cohort_locks.SlideLock(out, "s", 2).acquire()  # held, and touched by its beat
    time.sleep(3)  # longer than the expiry: a live holder's beat keeps it fresh
    assert not cohort_locks.SlideLock(out, "s", 2).acquire()
    holder.release()
    other = cohort_locks.SlideLock(out, "s", 2)
    assert other.acquire()
    other._stop.set()  # the holder is "killed": nobody touches the lock any more
    other._heartbeat.join()
    assert not cohort_locks.SlideLock(out, "s", 60).acquire()  # not yet expired at 60 s
    old = time.time() - 10
    os.utime(other.path, (old, old))
    taker = cohort_locks.SlideLock(out, "s", 2)
    assert taker.acquire() and taker.held() and not other.held()
    taker.release()


def test_the_lock_of_a_dead_process_of_this_host_is_broken_at_once(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    lock = cohort_locks.SlideLock(str(tmp_path), "s", 600)
    os.makedirs(lock.folder)
    with open(lock.path, "w") as f:
        json.dump({"host": socket.gethostname(), "pid": int(dead.stdout), "token": "x"}, f)
    assert lock.acquire()
    lock.release()
    with open(lock.path, "w") as f:  # negative control: a live process of this host
        json.dump({"host": socket.gethostname(), "pid": os.getpid(), "token": "x"}, f)
    assert not cohort_locks.SlideLock(str(tmp_path), "s", 600).acquire()


def test_a_run_killed_after_its_outputs_landed_counts_as_complete(tmp_path):
    """A run is recorded before it starts and its outputs land after: killed between the
    outputs and the record's removal, the slide is ok; killed before its outputs (an older
    complete output stays), it is unfinished; a failed run is an error whatever is older."""
    out = str(tmp_path)
    summary = {"slide": "/s.svs", "tissue_area_mm2": 1.0, "idc_area_mm2": 0.5,
               "idc_fraction": 0.5, "mean_idc_probability": 0.4, "tiles_read": 10,
               "unreadable_regions": [], "seconds": 1.0}
    os.makedirs(os.path.join(out, "s"))
    with open(os.path.join(out, "s", "summary.json"), "w") as f:
        json.dump(summary, f)
    attempts = cohort_locks.attempts_path(out, "s")
    for record, attempts_age, summary_age, status in (
            ({"attempts": 1, "error": None}, 20, 10, "ok"),
            ({"attempts": 1, "error": None}, 10, 20, "unfinished"),
            ({"attempts": 1, "error": "boom"}, 20, 10, "error")):
        cohort_locks.write_attempts(out, "s", {"slide": "/s.svs", **record})
        now = time.time()
        os.utime(attempts, (now - attempts_age,) * 2)
        os.utime(os.path.join(out, "s", "summary.json"), (now - summary_age,) * 2)
        (row,) = cohort_table.cohort_rows(out)
        assert row["status"] == status, (record, attempts_age, summary_age)


# --- the command -------------------------------------------------------------------------------

def _cohort_slides(folder, patches, count: int) -> list[str]:
    """`count` small pyramidal TIFFs (1280x1280 at 1.25 um/px, 64 patch cells each) in two
    subfolders, two of them named alike, each with other patches."""
    slides = []
    for i in range(count):
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        name = "same.tiff" if i < 2 else f"slide{i}.tiff"
        image = slide_files.mosaic(patches[(8 * i) % 40:][:24], 1.25, 8, 8)
        slides.append(str(sub / name))
        slide_files.write_tiled_tiff(slides[-1], image, 2, 1.25)
    return slides


def _command(model_dir, out, *arguments, wait=True):
    command = [sys.executable, "-m", "idc_engine.slide", f"--model_dir={model_dir}",
               f"--output_dir={out}", "--batch_size=64", *arguments]
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def _table(out) -> list[dict]:
    with open(os.path.join(out, cohort_table.COHORT_CSV), encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _processed(stdout: str) -> list[str]:
    """The output folders of the slides a run processed (its report's summary lines)."""
    return sorted(os.path.basename(os.path.dirname(line.split("summary: ", 1)[1]))
                  for line in stdout.splitlines() if line.strip().startswith("summary: "))


def _outputs(out) -> dict:
    """{name: (summary.json's inode and bytes, tiles.csv bytes)} of the complete outputs."""
    found = {}
    for name in outputs.slide_names(out) if os.path.isdir(out) else []:
        summary = os.path.join(out, name, "summary.json")
        if os.path.isfile(summary):
            with open(summary, "rb") as f, open(os.path.join(out, name, "tiles.csv"), "rb") as t:
                found[name] = (os.stat(summary).st_ino, f.read(), t.read())
    return found


@pytest.fixture(scope="module")
def cohort(eval_data, trained_model_dir, tmp_path_factory):
    """Six small slides (two of one name) and the model; cheap: each worker makes its own."""
    folder = tmp_path_factory.mktemp("cohort")
    patches = slide_files.split_patches(eval_data[0])["images"]
    return {"folder": folder, "slides": _cohort_slides(folder, patches, 6),
            "model_dir": trained_model_dir}


def _check_first_run(first, out: str, slides: list) -> list[str]:
    """The slides' output names, after checking a run of `slides` plus BROKEN: each slide
    once, the broken one an error row, the table and totals agreeing with the summaries."""
    assert first.returncode == 2, first.stderr[-3000:]
    assert "Traceback" not in first.stderr
    assert first.stdout.count("error: ") == 1 and BROKEN in first.stdout
    names = ["same", "same_2"] + [f"slide{i}" for i in range(2, 6)]
    assert _processed(first.stdout) == sorted(names)
    rows = {row["name"]: row for row in _table(out)}
    assert sorted(rows) == sorted(names + ["unopenable"])
    assert rows["unopenable"]["status"] == "error"
    assert "OpenSlide cannot open this file" in rows["unopenable"]["message"]
    for name in names:
        summary = json.loads(open(os.path.join(out, name, "summary.json")).read())
        assert rows[name]["status"] == "ok" and rows[name]["slide"] == summary["slide"]
        assert float(rows[name]["idc_fraction"]) == pytest.approx(summary["idc_fraction"])
        assert int(rows[name]["tiles"]) == summary["tiles_read"] > 0
    assert {rows["same"]["slide"], rows["same_2"]["slide"]} == set(slides[:2])
    totals = json.loads(open(os.path.join(out, cohort_table.COHORT_JSON)).read())
    assert (totals["slides"], totals["ok"], totals["error"]) == (7, 6, 1)
    assert os.path.getsize(os.path.join(out, cohort_table.COHORT_PNG)) > 0
    (worker,) = benchmark_events.setting_runs(os.path.join(out, "tensorboard")).values()
    assert worker["cohort/slides_done"] == [(step, step) for step in range(1, 8)]
    assert worker["cohort/slides_left"][-1] == (7, 0)
    return names


def _check_summarize(out: str) -> None:
    """--summarize rebuilds the same cohort.csv from the slides' files alone."""
    with open(os.path.join(out, cohort_table.COHORT_CSV), "rb") as f:
        before = f.read()
    os.remove(os.path.join(out, cohort_table.COHORT_CSV))
    result = subprocess.run([sys.executable, "-m", "idc_engine.slide", f"--summarize={out}"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(os.path.join(out, cohort_table.COHORT_CSV), "rb") as f:
        assert f.read() == before
    missing = subprocess.run([sys.executable, "-m", "idc_engine.slide",
                              f"--summarize={out}/nowhere"], capture_output=True, text=True,
                             timeout=300)
    assert missing.returncode == 2 and "error: --summarize=" in missing.stderr


def test_a_cohort_run_and_its_table(cohort, tmp_path):
    """Files, a directory and an @list holding a broken slide, the slides overlapping: each
    slide once, the broken one an error row; --summarize rebuilds the table. (Two shards of a
    list writing what one process writes: tests/test_benchmarks_quick.py's cohort benchmark,
    which fails unless they do.)"""
    folder, slides = cohort["folder"], cohort["slides"]
    (tmp_path / "slides.txt").write_text(
        "\n".join(os.path.relpath(s, tmp_path) for s in slides[2:]) + "\n" + BROKEN + "\n")
    out = str(tmp_path / "out")
    first = _command(cohort["model_dir"], out, "--overlap_slides=on", slides[0],
                     str(folder / "a"), f"@{tmp_path / 'slides.txt'}")
    _check_first_run(first, out, slides)
    _check_summarize(out)


def test_a_rerun_skips_complete_slides_and_overwrite_redoes_them(cohort, tmp_path):
    out = str(tmp_path / "out")
    slides = cohort["slides"][:2]
    first = _command(cohort["model_dir"], out, *slides)
    assert first.returncode == 0, first.stderr[-3000:]
    before = _outputs(out)
    again = _command(cohort["model_dir"], out, *slides)
    assert again.returncode == 0 and _processed(again.stdout) == []
    assert again.stderr.count("skipped: complete") == 2
    assert _outputs(out) == before
    # another threshold (any other fingerprint) is another result, not skipped
    summary = json.loads(open(os.path.join(out, "same", "summary.json")).read())
    wanted = dict(summary["fingerprint"])
    assert cohort_module._complete(out, "same", slides[0], summary["slide_quickhash"], wanted)
    wanted["threshold"] = 0.9
    assert not cohort_module._complete(out, "same", slides[0], summary["slide_quickhash"],
                                       wanted)
    redo = _command(cohort["model_dir"], out, "--overwrite", *slides)
    assert _processed(redo.stdout) == ["same", "same_2"]


def test_a_slide_whose_runs_never_complete_is_given_up(cohort, tmp_path):
    """What three killed runs leave (a run is counted before it starts): the fourth skips
    the slide as an error row; --overwrite runs it again."""
    out = str(tmp_path / "out")
    slide = cohort["slides"][2]
    name = cohort_locks.claim_name(out, slide)
    cohort_locks.write_attempts(out, name, {"slide": slide, "attempts": 3, "error": None})
    result = _command(cohort["model_dir"], out, "--max_attempts=3", slide)
    assert result.returncode == 2 and _processed(result.stdout) == []
    assert "given up after 3 runs that did not complete" in result.stdout
    (row,) = _table(out)
    assert row["status"] == "error" and "killed or crashed" in row["message"]
    redo = _command(cohort["model_dir"], out, "--max_attempts=3", "--overwrite", slide)
    assert redo.returncode == 0 and _processed(redo.stdout) == [name]
    assert [row["status"] for row in _table(out)] == ["ok"]


def test_a_slide_past_its_time_limit_is_an_error_row_and_a_counted_run(cohort, tmp_path):
    out = str(tmp_path / "out")
    slide = cohort["slides"][3]
    result = _command(cohort["model_dir"], out, "--slide_timeout_seconds=0.001", slide)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: {slide}: stopped after --slide_timeout_seconds=0.001" in result.stdout
    (row,) = _table(out)
    assert row["status"] == "error" and "--slide_timeout_seconds" in row["message"]
    assert cohort_locks.read_attempts(out, row["name"])["attempts"] == 1
    assert not os.path.exists(os.path.join(out, row["name"]))  # no output, not even partial


def test_kill_9_mid_cohort_then_a_rerun_finishes_every_slide_once(cohort, tmp_path):
    out = str(tmp_path / "out")
    slides = cohort["slides"]
    # slides overlapping: the kill may find a slide planned, one served and one being written
    worker = _command(cohort["model_dir"], out, "--overlap_slides=on", *slides, wait=False)
    deadline = time.time() + 300
    while not _outputs(out) and time.time() < deadline and worker.poll() is None:
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    survived = _outputs(out)
    assert 0 < len(survived) < len(slides), "kill -9 came too late to test anything"
    summary = subprocess.run([sys.executable, "-m", "idc_engine.slide", f"--summarize={out}"],
                             capture_output=True, text=True, timeout=300)
    statuses = sorted(row["status"] for row in _table(out))
    assert summary.returncode == 0 and statuses.count("ok") == len(survived)
    assert set(statuses) <= {"ok", "unfinished"}  # the slide killed midway, if any
    rerun = _command(cohort["model_dir"], out, *slides)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    every = _outputs(out)
    assert len(every) == len(slides)
    assert sorted(_processed(rerun.stdout)) == sorted(set(every) - set(survived))
    assert {name: every[name] for name in survived} == survived  # not redone, not touched
    assert [row["status"] for row in _table(out)] == ["ok"] * len(slides)
    assert not [n for n in os.listdir(out) if n.endswith(".partial")]


def test_two_workers_on_one_list_process_each_slide_once(cohort, tmp_path):
    out = str(tmp_path / "out")
    slides = cohort["slides"]
    workers = [_command(cohort["model_dir"], out, *slides, wait=False) for _ in range(2)]
    stdouts = [worker.communicate(timeout=600)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], stdouts
    processed = [_processed(stdout) for stdout in stdouts]
    assert sorted(processed[0] + processed[1]) == sorted(_outputs(out))
    assert len(_outputs(out)) == len(slides)


def _ran_alone(summaries: dict, names: list, name: str) -> bool:
    """Whether slide `name` (of `names`, in the order run) was planned after the previous
    slide's outputs were written and finished before the next one was planned."""
    i = names.index(name)
    after = i == 0 or summaries[names[i - 1]]["finished"] <= summaries[name]["started"]
    before = i == len(names) - 1 or summaries[name]["finished"] <= summaries[names[i + 1]]["started"]
    return after and before


def test_a_slide_an_earlier_run_left_unfinished_runs_alone(cohort, tmp_path):
    """Nothing planned or written beside it: were it the slide that crashes the process, only
    its own attempt would count against --max_attempts."""
    out = str(tmp_path / "out")
    slides = cohort["slides"][2:5]
    names = [cohort_locks.claim_name(out, slide) for slide in slides]
    cohort_locks.write_attempts(out, names[1], {"slide": slides[1], "attempts": 1, "error": None})
    result = _command(cohort["model_dir"], out, "--overlap_slides=on", *slides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "slides overlap: on (--overlap_slides)" in result.stderr
    summaries = {name: json.loads(open(os.path.join(out, name, "summary.json")).read())
                 for name in names}
    assert _ran_alone(summaries, names, names[1])
    assert cohort_locks.read_attempts(out, names[1]) == {}
    # the check fails on phases that overlap
    overlapping = {**summaries, names[2]: {**summaries[names[2]],
                                           "started": summaries[names[1]]["started"]}}
    assert not _ran_alone(overlapping, names, names[1])


def test_the_progress_bar_is_drawn_in_place_on_a_terminal_and_logged_otherwise(tmp_path):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal, log = Terminal(), io.StringIO()
    bar, lines = cohort_progress.Progress(2, stream=terminal), cohort_progress.Progress(2, stream=log)
    for progress in (bar, lines):
        progress.slide_done("/data/a.svs", "ok", 300)
        progress.clear()
        progress.slide_done("/data/b.svs", "error")
        progress.close()
    drawn = terminal.getvalue()
    assert drawn.count("\r\033[K|") == 2 and "| 2/2 slides, " in drawn and drawn.endswith("\n")
    assert "|" + "#" * cohort_progress.BAR_WIDTH + "|" in drawn  # full at the end
    assert "\n" not in drawn[:-1]  # one line, redrawn
    assert log.getvalue() == ""  # the log lines went to absl's log instead



def test_a_staging_folder_with_its_summary_written_is_not_a_slide(tmp_path):
    """A kill between summary.json's write and the staging folder's rename leaves
    NAME.partial/summary.json: neither the table nor a rerun's count may take it for a slide."""
    for name in ("a", "a.partial", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({"slide": f"/data/{name}.svs"}))
    assert outputs.slide_names(str(tmp_path)) == ["a", "b"]
