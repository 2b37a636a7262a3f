//! What `train-mnist` promises about crashes, shared output directories, foreign runs, closed
//! pipes and extreme flag values, on tiny synthetic MNIST files.

#[path = "../../../tests/support/flag_scan.rs"]
mod flag_scan;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_train-mnist");

fn train_mnist(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .args(["--device", "cpu", "--workers", "2"])
        .output()
        .expect("train-mnist starts")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn synthetic(dir: &Path) -> String {
    let data = dir.join("mnist");
    train::synthetic::write_mnist(&data, 96, 40).expect("synthetic MNIST");
    s(&data)
}

fn metrics_without_seconds(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join(train::rundir::METRICS_CSV)).expect("metrics.csv");
    text.lines()
        .map(|l| l.rsplit_once(',').map_or(l, |(head, _)| head).to_string())
        .collect()
}

fn common(data: &str, out: &Path) -> Vec<String> {
    [
        "--data-dir",
        data,
        "--model",
        "lenet5",
        "--batch-size",
        "16",
        "--test-batch-size",
        "20",
        "--epochs",
        "6",
        "--out",
        &s(out),
    ]
    .map(String::from)
    .to_vec()
}

/// [`common`] with `--epochs epochs`.
fn common_epochs(data: &str, out: &Path, epochs: &str) -> Vec<String> {
    let mut args = common(data, out);
    let at = args.iter().position(|a| a == "--epochs").expect("--epochs") + 1;
    args[at] = epochs.into();
    args
}

/// SIGKILL at moments spread over a whole run, then `--resume` (or `--overwrite` when no epoch
/// had finished): the run always continues, leaves no temporary file, and ends with the same
/// weights and metrics as an uninterrupted run.
#[test]
fn a_kill_at_any_moment_leaves_a_resumable_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = synthetic(dir.path());
    let whole = dir.path().join("whole");
    let started = Instant::now();
    let run = train_mnist(
        &common(&data, &whole)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(run.status.success(), "{}", stderr(&run));
    let duration = started.elapsed();

    let parts = dir.path().join("parts");
    let mut kills = (1..=8)
        .map(|k| duration * k / 9)
        .collect::<Vec<_>>()
        .into_iter();
    let mut attempts = 0;
    loop {
        attempts += 1;
        assert!(attempts < 40, "the run never finished");
        let mut args = common(&data, &parts);
        if parts.join(train::rundir::STATE).exists() {
            args = vec!["--resume".into(), s(&parts)];
        } else if parts.exists() {
            args.push("--overwrite".into());
        }
        let mut child = Command::new(BIN)
            .args(&args)
            .args(["--device", "cpu", "--workers", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("train-mnist starts");
        match kills.next() {
            Some(delay) => {
                std::thread::sleep(delay);
                let _ = child.kill();
                let _ = child.wait();
            }
            None => {
                let out = child.wait_with_output().expect("wait");
                assert!(out.status.success(), "{args:?}: {}", stderr(&out));
                break;
            }
        }
    }
    for name in [train::rundir::LAST, train::rundir::BEST] {
        assert!(
            std::fs::read(whole.join(name)).expect("whole")
                == std::fs::read(parts.join(name)).expect("parts"),
            "{name} differs after kills and resumes"
        );
    }
    assert_eq!(
        metrics_without_seconds(&whole),
        metrics_without_seconds(&parts)
    );
    let leftovers: Vec<String> = std::fs::read_dir(&parts)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Each killed process's event file that holds nothing (killed before an epoch's end) went
    // with the next start; every epoch is in those left.
    for entry in std::fs::read_dir(&parts).expect("list") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with(train::rundir::EVENTS_PREFIX) {
            let events = train::tensorboard::read_events(&path).unwrap_or_default();
            assert!(
                events.is_empty() || events.iter().any(|e| e.summary.is_some()),
                "{name} holds no record but its version"
            );
        }
    }
    let mut logged = logged_epochs(&parts);
    logged.dedup();
    assert_eq!(logged, (1..=6).collect::<Vec<i64>>());
}

/// The epochs (steps) for which the TensorBoard event files in `dir` hold `test/acc`.
fn logged_epochs(dir: &Path) -> Vec<i64> {
    let mut epochs = Vec::new();
    for entry in std::fs::read_dir(dir).expect("list") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if !name.starts_with(train::rundir::EVENTS_PREFIX) {
            continue;
        }
        // As TensorBoard reads them: up to a record a kill cut short.
        for event in train::tensorboard::read_events_until_damage(&path).expect("event file") {
            let tagged = event
                .summary
                .iter()
                .flat_map(|s| &s.value)
                .any(|v| v.tag == "test/acc");
            if tagged {
                epochs.push(event.step);
            }
        }
    }
    epochs.sort_unstable();
    epochs
}

/// Whether `out` holds a temporary of the run's file `name` (`last.safetensors`, one being
/// written).
fn writing(out: &Path, name: &str) -> bool {
    let stem = name.split('.').next().unwrap_or(name);
    std::fs::read_dir(out).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let found = e.file_name().to_string_lossy().into_owned();
            found.starts_with(&format!("{name}.tmp")) || found.starts_with(&format!(".{stem}.tmp"))
        })
    })
}

/// Runs train-mnist with `args` and kills it (SIGKILL) while it writes the run's file `name`
/// once the state records `saved` epochs: `last.safetensors` with `saved` the epoch just
/// committed, `state.safetensors` with `saved` the epoch before the one being saved. Returns
/// whether it was killed so: the temporary still there after the kill (a killed process
/// renames nothing). Tries fresh runs (`--overwrite`) until one is caught, up to 20.
fn kill_while_writing(args: &[String], out: &Path, name: &str, saved: usize) -> bool {
    (0..20).any(|_| {
        let mut child = Command::new(BIN)
            .args(args)
            .args(["--overwrite", "--device", "cpu", "--workers", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("train-mnist starts");
        loop {
            if child.try_wait().expect("wait").is_some() {
                return false;
            }
            let committed = train::state::saved_epochs(out).is_some_and(|(done, _)| done == saved);
            if committed && writing(out, name) {
                let _ = child.kill();
                let _ = child.wait();
                return writing(out, name);
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    })
}

/// [`kill_while_writing`] of `last.safetensors` just after epoch `epoch` was committed.
fn kill_as_last_is_written(args: &[String], out: &Path, epoch: usize) -> bool {
    kill_while_writing(args, out, train::rundir::LAST, epoch)
}

/// A kill just after an epoch's state is committed loses none of that epoch's TensorBoard
/// scalars or pictures: they are written before the state. The resumed run's event files hold
/// every epoch once or more (an epoch trained again logs again), and a run killed so in its
/// last epoch, resumed, has its pictures.
#[test]
fn a_kill_after_the_state_loses_no_tensorboard_epoch_or_picture() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = synthetic(dir.path());
    for (epochs, nth) in [("3", 1), ("1", 1)] {
        let out = dir.path().join(format!("run-{epochs}"));
        let args = common_epochs(&data, &out, epochs);
        assert!(
            kill_as_last_is_written(&args, &out, nth),
            "the run was never caught writing last.safetensors"
        );
        assert!(
            out.join(train::rundir::STATE).is_file(),
            "epoch 1 committed"
        );
        let resumed = train_mnist(&["--resume", &s(&out)]);
        assert!(resumed.status.success(), "{}", stderr(&resumed));
        let want: Vec<i64> = (1..=epochs.parse().expect("a number")).collect();
        let mut logged = logged_epochs(&out);
        logged.dedup();
        assert_eq!(logged, want, "TensorBoard's test/acc epochs");
        for picture in [train::rundir::PREDICTIONS, train::rundir::CONFUSION] {
            assert!(out.join(picture).is_file(), "{picture} of the last epoch");
        }
    }
}

/// A run killed while saving its second epoch's state has logged that epoch (pictures and
/// TensorBoard scalars come first): resumed with `--epochs 1`, the run trains no more and says
/// that the pictures and TensorBoard show an epoch it did not save.
#[test]
fn a_finished_resume_names_an_epoch_logged_but_not_saved() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = synthetic(dir.path());
    let out = dir.path().join("run");
    let args = common_epochs(&data, &out, "2");
    assert!(
        kill_while_writing(&args, &out, train::rundir::STATE, 1),
        "the run was never caught writing the state of epoch 2"
    );
    assert_eq!(train::state::saved_epochs(&out).map(|e| e.0), Some(1));
    let resumed = train_mnist(&["--resume", &s(&out), "--epochs", "1"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(
        stderr(&resumed)
            .contains("epoch 2 was trained and logged, but the run stopped while saving it")
            && stderr(&resumed).contains("--epochs 2 with --resume trains it again"),
        "{}",
        stderr(&resumed)
    );
    // Trained again, the note goes.
    let again = train_mnist(&["--resume", &s(&out), "--epochs", "2"]);
    assert!(again.status.success(), "{}", stderr(&again));
    let done = train_mnist(&["--resume", &s(&out), "--epochs", "2"]);
    assert!(
        !stderr(&done).contains("was trained and logged"),
        "{}",
        stderr(&done)
    );
}

/// A run whose data folder moved: `--resume` says the folder came from the run's config.json
/// and to give --data-dir where the data is now (as `evaluate` does), and with it continues.
#[test]
fn a_resume_whose_data_moved_says_how_to_give_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = synthetic(dir.path());
    let out = dir.path().join("run");
    let first = train_mnist(
        &common_epochs(&data, &out, "1")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(first.status.success(), "{}", stderr(&first));
    let moved = dir.path().join("moved");
    std::fs::rename(&data, &moved).expect("move the data");
    let resumed = train_mnist(&["--resume", &s(&out), "--epochs", "2"]);
    assert!(!resumed.status.success());
    let err = stderr(&resumed);
    assert!(
        err.contains(&format!(
            "the run's data, --data-dir {data} (from its config.json), is not there"
        )) && err.contains("give --data-dir where the data is now"),
        "{err}"
    );
    assert_eq!(train::state::saved_epochs(&out).map(|e| e.0), Some(1));
    let given = train_mnist(&[
        "--resume",
        &s(&out),
        "--epochs",
        "2",
        "--data-dir",
        &s(&moved),
    ]);
    assert!(given.status.success(), "{}", stderr(&given));
    assert_eq!(train::state::saved_epochs(&out).map(|e| e.0), Some(2));
}

/// A flag given twice takes its last value, as argparse does (a script's defaults, then the
/// value of this run): here one epoch, not three.
#[test]
fn a_flag_given_twice_takes_its_last_value() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = synthetic(dir.path());
    let out = dir.path().join("run");
    let mut args = common_epochs(&data, &out, "3");
    args.extend(["--epochs", "1"].map(String::from));
    let run = train_mnist(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(train::state::saved_epochs(&out).map(|e| e.0), Some(1));
}

/// A run stopped between its first epoch's state and its checkpoints (here: a finished 1-epoch
/// run whose checkpoints are then removed, what such a kill leaves) is evaluated: `evaluate`
/// writes `last` and `best` from the state first, as `--resume` would, says so, and they are
/// the checkpoints the run wrote, bit for bit. Links to nothing in their place stay.
#[test]
fn evaluating_a_run_stopped_before_its_checkpoints_writes_them_from_the_state() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_, out) = one_epoch_run(dir.path());
    let read = |name: &str| std::fs::read(out.join(name)).expect("checkpoint");
    let (best, last) = (read(train::rundir::BEST), read(train::rundir::LAST));
    for name in [train::rundir::BEST, train::rundir::LAST] {
        std::fs::remove_file(out.join(name)).expect("remove");
    }
    let evaluate = Command::new(BIN)
        .args(["evaluate", "--run", &s(&out), "--device", "cpu"])
        .output()
        .expect("evaluate starts");
    assert!(evaluate.status.success(), "{}", stderr(&evaluate));
    assert!(
        stderr(&evaluate).contains("was missing: written again from state.safetensors"),
        "{}",
        stderr(&evaluate)
    );
    assert!(read(train::rundir::BEST) == best && read(train::rundir::LAST) == last);
    // `last` without `best` where the last epoch was the best: a process killed between
    // writing the two from the state (`last` first). `predict` writes `best` too.
    std::fs::remove_file(out.join(train::rundir::BEST)).expect("remove");
    let image = dir.path().join("digit.png");
    image::GrayImage::new(28, 28).save(&image).expect("a digit");
    let predict = Command::new(BIN)
        .args(["predict", "--run", &s(&out), "--device", "cpu", &s(&image)])
        .output()
        .expect("predict starts");
    assert!(predict.status.success(), "{}", stderr(&predict));
    assert!(
        stderr(&predict).contains(&format!(
            "{} was missing: written again from state.safetensors",
            out.join(train::rundir::BEST).display()
        )),
        "{}",
        stderr(&predict)
    );
    assert!(read(train::rundir::BEST) == best && read(train::rundir::LAST) == last);
    // A link the user put in `last`'s place stays one when `best` is written again beside it.
    let kept = dir.path().join("kept-last.safetensors");
    std::fs::rename(out.join(train::rundir::LAST), &kept).expect("move last");
    std::os::unix::fs::symlink(&kept, out.join(train::rundir::LAST)).expect("link");
    std::fs::remove_file(out.join(train::rundir::BEST)).expect("remove");
    let predict = Command::new(BIN)
        .args(["predict", "--run", &s(&out), "--device", "cpu", &s(&image)])
        .output()
        .expect("predict starts");
    assert!(predict.status.success(), "{}", stderr(&predict));
    let link = std::fs::symlink_metadata(out.join(train::rundir::LAST)).expect("last");
    assert!(link.file_type().is_symlink(), "last was written over");
    assert!(read(train::rundir::BEST) == best && read(train::rundir::LAST) == last);
    std::fs::remove_file(out.join(train::rundir::LAST)).expect("unlink");
    std::fs::rename(&kept, out.join(train::rundir::LAST)).expect("put back");
    // Links to nothing (storage unmounted) are the user's: never written over.
    for name in [train::rundir::BEST, train::rundir::LAST] {
        std::fs::remove_file(out.join(name)).expect("remove");
        std::os::unix::fs::symlink(dir.path().join("gone"), out.join(name)).expect("link");
    }
    let dangling = Command::new(BIN)
        .args(["evaluate", "--run", &s(&out), "--device", "cpu"])
        .output()
        .expect("evaluate starts");
    assert!(!dangling.status.success());
    for name in [train::rundir::BEST, train::rundir::LAST] {
        let meta = std::fs::symlink_metadata(out.join(name)).expect("link");
        assert!(meta.file_type().is_symlink(), "{name} was written over");
    }
}

/// The run directory `out`'s lock, taken here (standing for another process holding it).
fn hold_lock(out: &Path) -> std::fs::File {
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .open(out.join(train::rundir::LOCK))
        .expect("the run's lock file");
    lock.try_lock().expect("no process holds the run's lock");
    lock
}

/// Starts `args` with stderr read line by line on a thread; returns the child, the lines as
/// they come, and the thread that collects them all (joined for the whole stderr).
fn spawn_reading_stderr(
    args: &[&str],
) -> (
    std::process::Child,
    std::sync::mpsc::Receiver<String>,
    std::thread::JoinHandle<String>,
) {
    use std::io::BufRead;
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("train-mnist starts");
    let err = child.stderr.take().expect("stderr");
    let (send, lines) = std::sync::mpsc::channel();
    let all = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            all += &line;
            all.push('\n');
            let _ = send.send(line);
        }
        all
    });
    (child, lines, all)
}

/// Waits (at most a minute) for a line containing `text` from [`spawn_reading_stderr`].
fn wait_for_line(lines: &std::sync::mpsc::Receiver<String>, text: &str) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        match lines.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.contains(text) => return,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    panic!("no line containing {text:?} within a minute");
}

/// A reader that finds the checkpoints missing while another process holds the run directory
/// (here the test, standing for another `evaluate` writing them from the state) waits for
/// them, then reads the ones the other wrote: it neither fails nor writes them again. Where
/// the process holds the directory past the wait, the reader says so and writes nothing. A
/// `--resume` started while a reader holds the directory for a moment waits for it too.
#[test]
fn a_reader_waits_for_the_checkpoints_another_reader_writes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_, out) = one_epoch_run(dir.path());
    let names = [train::rundir::BEST, train::rundir::LAST];
    let saved: Vec<Vec<u8>> = names
        .iter()
        .map(|name| std::fs::read(out.join(name)).expect("checkpoint"))
        .collect();
    for name in names {
        std::fs::remove_file(out.join(name)).expect("remove");
    }
    let lock = hold_lock(&out);
    let run = s(&out);
    let (mut evaluate, lines, all) =
        spawn_reading_stderr(&["evaluate", "--run", &run, "--device", "cpu"]);
    // Once it says it waits: the other reader's writes, each file whole at once, `last` then
    // `best` as a restore writes them, a moment apart (the reader, which wants `best`, waits
    // for both, not only the first).
    wait_for_line(&lines, "waiting up to 20 s");
    for (name, bytes) in names.iter().zip(&saved).rev() {
        let part = out.join(format!("{name}.part"));
        std::fs::write(&part, bytes).expect("write");
        std::fs::rename(&part, out.join(name)).expect("rename");
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(lock);
    let status = evaluate.wait().expect("evaluate ends");
    let err = all.join().expect("stderr");
    assert!(status.success(), "{err}");
    assert!(!err.contains("written again from"), "{err}");
    for (name, bytes) in names.iter().zip(&saved) {
        assert!(&std::fs::read(out.join(name)).expect("checkpoint") == bytes);
    }
    // Held throughout (a `--resume` still loading its data): said so after the wait, and
    // nothing written.
    for name in names {
        std::fs::remove_file(out.join(name)).expect("remove");
    }
    let lock = hold_lock(&out);
    let held = Command::new(BIN)
        .args(["evaluate", "--run", &s(&out), "--device", "cpu"])
        .output()
        .expect("evaluate starts");
    drop(lock);
    assert!(!held.status.success());
    assert!(
        stderr(&held).contains("another process still held the directory after a wait of 20 s"),
        "{}",
        stderr(&held)
    );
    assert!(names.iter().all(|name| !out.join(name).exists()));
    // A `--resume` started while a reader holds the directory for a moment waits for it.
    let lock = hold_lock(&out);
    let (mut resume, lines, all) =
        spawn_reading_stderr(&["--resume", &run, "--epochs", "1", "--device", "cpu"]);
    wait_for_line(&lines, "trying again for 5 s");
    drop(lock);
    let status = resume.wait().expect("the resume ends");
    let err = all.join().expect("stderr");
    assert!(status.success(), "{err}");
    assert!(
        std::fs::read(out.join(train::rundir::LAST)).expect("written again") == saved[1],
        "{err}"
    );
}

/// A live run whose `.lock` was removed by hand (taken for a stale one) and a second command
/// on its `--out`, refused for the run there after making a lock file of its own: the refused
/// command takes its lock file away as it ends, and the run trains on to its last epoch,
/// locking its folder again (before, it stopped at its next write as if another run had taken
/// the folder, and said not to resume it; a tester).
#[test]
fn a_refused_command_leaves_a_live_run_to_train_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Epochs long enough (about a second) for the second command to start and end between
    // two of the run's writes.
    let data = dir.path().join("mnist");
    train::synthetic::write_mnist(&data, 20000, 40).expect("synthetic MNIST");
    // Where the run locked its folder again before the command started (a busy machine), the
    // command waited for the run and nothing was tested: tried again.
    for attempt in 1..=3 {
        let out = dir.path().join(format!("run{attempt}"));
        let mut args = common(&s(&data), &out);
        let epochs = args.iter().position(|a| a == "--epochs").expect("--epochs") + 1;
        args[epochs] = "4".into();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (mut run, _lines, all) = spawn_reading_stderr(&args);
        let started = Instant::now();
        let epochs_saved = || {
            std::fs::read_to_string(out.join(train::rundir::METRICS_CSV))
                .map_or(0, |t| t.lines().count().saturating_sub(1))
        };
        // Epoch 1's files written to their last, the curves (written after the metrics): the
        // run's next write is epoch 2's first, an epoch away.
        while epochs_saved() < 1 || !out.join(train::rundir::CURVES).is_file() {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "no epoch saved"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        std::fs::remove_file(out.join(train::rundir::LOCK)).expect("remove the live run's lock");
        let refused = train_mnist(&args);
        assert!(
            !refused.status.success() && stderr(&refused).contains("already holds a run"),
            "{}",
            stderr(&refused)
        );
        let status = run.wait().expect("the run ends");
        let err = all.join().expect("stderr");
        assert!(status.success(), "{err}");
        assert!(!err.contains("another run has taken the folder"), "{err}");
        assert_eq!(epochs_saved(), 4, "{err}");
        if stderr(&refused).contains("trying again for") {
            continue;
        }
        assert!(err.contains("locked again"), "{err}");
        return;
    }
    panic!("the command never came between two of the run's writes: nothing was tested");
}

/// A run killed as its last epoch's `last.safetensors` was being written holds that epoch in its
/// state and the epoch before in `last`: `evaluate --weights last` says so (and how to mend
/// it), and stops saying it once `--resume` has written `last` again. The state given as
/// `--weights` is named as what it is.
#[test]
fn evaluating_a_checkpoint_behind_the_state_says_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = synthetic(dir.path());
    let out = dir.path().join("run");
    let args = common_epochs(&data, &out, "2");
    assert!(
        kill_as_last_is_written(&args, &out, 2),
        "the run was never caught writing last.safetensors"
    );
    let evaluate = |weights: &str| {
        Command::new(BIN)
            .args(["evaluate", "--run", &s(&out), "--weights", weights])
            .args(["--device", "cpu"])
            .output()
            .expect("evaluate starts")
    };
    let behind = evaluate("last");
    assert!(behind.status.success(), "{}", stderr(&behind));
    assert!(
        stderr(&behind).contains(&format!(
            "{} holds other weights than the run's state.safetensors (epoch 2)",
            out.join(train::rundir::LAST).display()
        )) && stderr(&behind).contains(&format!("train-mnist --resume {}", s(&out))),
        "{}",
        stderr(&behind)
    );
    // The same file by its path, and the folder copied (times not kept: `last` copied after
    // the state, so newer): the same note.
    let by_path = evaluate(&s(&out.join(train::rundir::LAST)));
    assert!(
        stderr(&by_path).contains("holds other weights than the run's state.safetensors"),
        "{}",
        stderr(&by_path)
    );
    let copy = dir.path().join("copy");
    std::fs::create_dir(&copy).expect("copy");
    for name in [
        train::rundir::STATE,
        train::rundir::LAST,
        train::rundir::CONFIG,
        train::rundir::CLASSES,
    ] {
        std::fs::copy(out.join(name), copy.join(name)).expect("copy");
    }
    let copied = Command::new(BIN)
        .args([
            "evaluate",
            "--run",
            &s(&copy),
            "--weights",
            "last",
            "--device",
            "cpu",
        ])
        .output()
        .expect("evaluate starts");
    assert!(
        stderr(&copied).contains("holds other weights than the run's state.safetensors"),
        "{}",
        stderr(&copied)
    );
    let state = out.join(train::rundir::STATE);
    let refused = evaluate(&s(&state));
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("a run's resume state (the weights of epoch 2")
            && stderr(&refused).contains(&format!(
                "take --weights {}",
                out.join(train::rundir::LAST).display()
            )),
        "{}",
        stderr(&refused)
    );
    let resumed = train_mnist(&["--resume", &s(&out)]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let mended = evaluate("last");
    assert!(mended.status.success(), "{}", stderr(&mended));
    assert!(
        !stderr(&mended).contains("holds other weights"),
        "{}",
        stderr(&mended)
    );
}

/// `train-mnist` training cnn-mnist for 3 epochs on `data` into `out`, its stdout and stderr
/// piped, returned once its first epoch's line is out (the epoch's files then being written).
fn cnn_past_its_first_epoch(data: &Path, out: &Path) -> std::process::Child {
    use std::io::BufRead;
    let mut child = Command::new(BIN)
        .args(["--data-dir", &s(data), "--out", &s(out)])
        .args(["--model", "cnn-mnist", "--epochs", "3", "--device", "cpu"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("train-mnist starts");
    let stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    for line in stdout.lines().map_while(Result::ok) {
        if line.starts_with("epoch 1/3") {
            break;
        }
    }
    child
}

/// SIGINT's number.
fn libc_sigint() -> i32 {
    libc::SIGINT
}

/// Sends SIGINT (Ctrl-C) to `child` as soon as `ready` holds, and waits for it.
fn ctrl_c_when(child: std::process::Child, ready: impl Fn() -> bool) -> Output {
    signal_when(child, libc::SIGINT, ready)
}

/// Sends `signal` to `child` as soon as `ready` holds, and waits for it.
fn signal_when(child: std::process::Child, signal: i32, ready: impl Fn() -> bool) -> Output {
    let waited = Instant::now();
    while !ready() {
        assert!(waited.elapsed() < Duration::from_secs(120), "never ready");
        std::thread::sleep(Duration::from_millis(1));
    }
    let pid = libc::pid_t::try_from(child.id()).expect("a pid");
    // SAFETY: a plain kill(2) of our own child, which has not been waited for yet.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    child.wait_with_output().expect("wait")
}

/// SIGTERM (Slurm's at a time limit or preemption, `docker stop`'s) stops the run as Ctrl-C
/// does: after the batch, every finished epoch saved (also the one whose files were being
/// written), where it stopped and how to go on said, the process ending by SIGTERM (status
/// 143) so that the batch system sees it was stopped; --resume continues.
#[test]
fn sigterm_stops_after_the_batch_keeping_every_finished_epoch() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = synthetic(dir.path());
    let out = dir.path().join("run");
    let mut args = common(&data, &out);
    for (flag, value) in [("--batch-size", "1"), ("--epochs", "100")] {
        let at = args.iter().position(|a| a == flag).expect("flag");
        args[at + 1] = value.into();
    }
    let child = Command::new(BIN)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("train-mnist starts");
    let state = out.join(train::rundir::STATE);
    let stopped = signal_when(child, libc::SIGTERM, || state.exists());
    let err = stderr(&stopped);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&stopped.status),
        Some(libc::SIGTERM),
        "{err}"
    );
    let done = metrics_without_seconds(&out).len() - 1; // the header
    assert!((1..100).contains(&done), "{done} epochs");
    assert!(
        (err.contains("SIGTERM: stopping after this batch")
            || err.contains("SIGTERM: stopping once this epoch's test pass ends"))
            && err.contains(&format!("stopped by SIGTERM in epoch {} of 100", done + 1))
            && err.contains(&format!("continue with --resume {}", out.display())),
        "{err}"
    );
    let resumed = train_mnist(&["--resume", &s(&out), "--epochs", &(done + 1).to_string()]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert_eq!(metrics_without_seconds(&out).len(), done + 2);
}

/// Ctrl-C stops the run after the current batch, saying where it stopped and how to continue,
/// and then ends by SIGINT (so a shell loop around it stops); every finished epoch stays saved (also the one whose files were being
/// written on the second thread), and --resume continues. Ctrl-C during an --overwrite whose
/// new run has saved no epoch puts the old run back at once.
#[test]
fn ctrl_c_keeps_every_finished_epoch_and_undoes_an_unsaved_overwrite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = synthetic(dir.path());
    let out = dir.path().join("run");
    // Long enough that Ctrl-C comes in the middle: 100 epochs of 96 one-image steps.
    let long = |data: &str, extra: &[&str]| {
        let mut args = common(data, &out);
        for (flag, value) in [("--batch-size", "1"), ("--epochs", "100")] {
            let at = args.iter().position(|a| a == flag).expect("flag");
            args[at + 1] = value.into();
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        Command::new(BIN)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("train-mnist starts")
    };
    let state = out.join(train::rundir::STATE);
    let stopped = ctrl_c_when(long(&data, &[]), || state.exists());
    let err = stderr(&stopped);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&stopped.status),
        Some(libc_sigint()),
        "{err}"
    );
    assert!(
        err.contains("stopped by Ctrl-C in epoch")
            && err.contains(&format!("continue with --resume {}", out.display())),
        "{err}"
    );
    let done = metrics_without_seconds(&out).len() - 1; // the header
    assert!((1..100).contains(&done), "{done} epochs");
    assert!(
        err.contains(&format!("in epoch {} of 100", done + 1)),
        "{err}"
    );
    let resumed = train_mnist(&["--resume", &s(&out), "--epochs", &(done + 1).to_string()]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert_eq!(metrics_without_seconds(&out).len(), done + 2);

    let config = std::fs::read(out.join(train::rundir::CONFIG)).expect("config");
    let aside = out.join(train::rundir::REPLACED);
    // The new run's first epoch (4,000 steps) cannot end before Ctrl-C reaches it.
    let more = dir.path().join("more");
    train::synthetic::write_mnist(&more, 4000, 40).expect("synthetic MNIST");
    // Once the new run trains (its configuration written): Ctrl-C before that ends the
    // process at once, and the old run comes back at the next lock or read.
    let stopped = ctrl_c_when(long(&s(&more), &["--overwrite", "--lr", "0.01"]), || {
        aside.exists() && std::fs::read(out.join(train::rundir::CONFIG)).is_ok_and(|c| c != config)
    });
    let err = stderr(&stopped);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&stopped.status),
        Some(libc_sigint()),
        "{err}"
    );
    assert!(err.contains("no epoch had finished"), "{err}");
    assert!(!aside.exists(), "{err}");
    assert_eq!(
        std::fs::read(out.join(train::rundir::CONFIG)).expect("config"),
        config
    );
    assert_eq!(metrics_without_seconds(&out).len(), done + 2);
}

/// A second SIGTERM (GNU `timeout` sends the program one and its process group another)
/// changes nothing: the run still stops after its batch, every finished epoch saved. A run
/// started with SIGTERM ignored (a parent may ask so) keeps ignoring it and trains to its end.
#[test]
fn a_second_sigterm_changes_nothing_and_an_ignored_one_stays_ignored() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let data = synthetic(dir.path());
    let (out, ignoring) = (dir.path().join("run"), dir.path().join("ignoring"));
    let start = |out: &Path, epochs: &str, ignore: bool| {
        let mut args = common_epochs(&data, out, epochs);
        let at = args.iter().position(|a| a == "--batch-size").expect("flag");
        args[at + 1] = "1".into();
        let mut command = Command::new(BIN);
        command
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if ignore {
            // SAFETY: only signal(2) between fork and exec.
            unsafe {
                command.pre_exec(|| {
                    libc::signal(libc::SIGTERM, libc::SIG_IGN);
                    Ok(())
                });
            }
        }
        command.spawn().expect("train-mnist starts")
    };
    let term = |child: &std::process::Child| {
        let pid = libc::pid_t::try_from(child.id()).expect("a pid");
        // SAFETY: a plain kill(2) of our own child, which has not been waited for yet.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    };
    // Two SIGTERMs a moment apart while the epochs train (here a CNN's batches of 64, long
    // enough for the second to come before the run ends), tried until both were heard.
    let bigger = dir.path().join("bigger");
    train::synthetic::write_mnist(&bigger, 512, 64).expect("synthetic MNIST");
    let mut heard = false;
    for _ in 0..5 {
        let _ = std::fs::remove_dir_all(&out);
        let child = cnn_past_its_first_epoch(&bigger, &out);
        term(&child);
        std::thread::sleep(Duration::from_millis(2));
        term(&child);
        let stopped = child.wait_with_output().expect("wait");
        let err = stderr(&stopped);
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&stopped.status),
            Some(libc::SIGTERM),
            "{err}"
        );
        assert!(
            err.contains("stopped by SIGTERM in epoch") && !err.contains("stopping at once"),
            "{err}"
        );
        heard = err.contains("SIGTERM again: the run is already stopping");
        if heard {
            break;
        }
    }
    assert!(heard, "no second SIGTERM was heard while the run stopped");
    let child = start(&ignoring, "3", true);
    let state = ignoring.join(train::rundir::STATE);
    let waited = Instant::now();
    while !state.exists() {
        assert!(waited.elapsed() < Duration::from_secs(120), "never ready");
        std::thread::sleep(Duration::from_millis(1));
    }
    term(&child);
    let ended = child.wait_with_output().expect("wait");
    assert!(ended.status.success(), "{}", stderr(&ended));
    assert_eq!(metrics_without_seconds(&ignoring).len(), 4);
}

/// A second Ctrl-C ends the process at once; a fresh run that has saved no epoch yet (here in
/// its first batch, one of 4,000 images) then leaves no directory of pictures and events
/// without a state behind, as a run stopped in its first epoch by one Ctrl-C leaves none.
#[test]
fn a_second_ctrl_c_before_the_first_epoch_is_saved_leaves_no_run() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("mnist");
    train::synthetic::write_mnist(&data, 4000, 40).expect("synthetic MNIST");
    let out = dir.path().join("run");
    let events = || {
        std::fs::read_dir(&out).is_ok_and(|d| {
            d.flatten().any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("events.out.tfevents")
            })
        })
    };
    let sigint = |pid: libc::pid_t| {
        // SAFETY: a plain kill(2) of our own child, which has not been waited for yet.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    };
    let mut landed = false;
    for _ in 0..5 {
        let mut child = Command::new(BIN)
            .args([
                "--data-dir",
                &s(&data),
                "--out",
                &s(&out),
                "--model",
                "cnn-mnist",
            ])
            .args(["--batch-size", "4000", "--epochs", "2", "--device", "cpu"])
            .env("RAYON_NUM_THREADS", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("train-mnist starts");
        let pid = libc::pid_t::try_from(child.id()).expect("a pid");
        let waited = Instant::now();
        while !events() {
            assert!(waited.elapsed() < Duration::from_secs(120), "never trained");
            std::thread::sleep(Duration::from_millis(1));
        }
        // The batch loaded (milliseconds) and in its product (a second or more on one thread).
        std::thread::sleep(Duration::from_millis(200));
        sigint(pid);
        let mut lines = std::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
        let mut err = String::new();
        for line in lines.by_ref().map_while(Result::ok) {
            err += &line;
            err.push('\n');
            if line.contains("stopping after this batch") {
                break;
            }
        }
        sigint(pid);
        err.extend(lines.map_while(Result::ok).map(|l| l + "\n"));
        let status = child.wait().expect("wait");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc_sigint()),
            "{err}"
        );
        // Either way (the batch may have ended before the second), no run is left.
        assert!(!out.exists(), "{err}");
        landed = err.contains("Ctrl-C again: stopping at once, before the first epoch was saved");
        if landed {
            break;
        }
    }
    assert!(landed, "no second Ctrl-C landed in the first batch");
}

/// A second Ctrl-C right after the first, while the finished first epoch's files are being
/// written on the second thread, lets that write end before the process stops (it removed the
/// run as one that had saved nothing, although the first Ctrl-C had said the finished epochs
/// stay saved: a user's finding); the epoch then evaluates. Tried until the second Ctrl-C
/// lands during the write.
#[test]
fn a_second_ctrl_c_while_an_epoch_is_written_keeps_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("mnist");
    train::synthetic::write_mnist(&data, 512, 64).expect("synthetic MNIST");
    let out = dir.path().join("run");
    let sigint = |pid: libc::pid_t| {
        // SAFETY: a plain kill(2) of our own child, which has not been waited for yet.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    };
    let mut landed = false;
    for _ in 0..5 {
        let _ = std::fs::remove_dir_all(&out);
        let child = cnn_past_its_first_epoch(&data, &out);
        let pid = libc::pid_t::try_from(child.id()).expect("a pid");
        sigint(pid);
        std::thread::sleep(Duration::from_millis(20));
        sigint(pid);
        let output = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&output.status),
            Some(libc_sigint()),
            "{err}"
        );
        for file in ["state.safetensors", "best.safetensors", "last.safetensors"] {
            assert!(out.join(file).exists(), "{file} missing: {err}");
        }
        landed = err.contains("Ctrl-C again: stopping once the finished epoch's files are written");
        if landed {
            break;
        }
    }
    assert!(
        landed,
        "no second Ctrl-C landed while the first epoch was written"
    );
    let evaluated = Command::new(BIN)
        .args(["evaluate", "--run", &s(&out), "--data-dir", &s(&data)])
        .output()
        .expect("evaluate");
    assert!(evaluated.status.success(), "{}", stderr(&evaluated));
}

/// SIGTERM during an epoch's test pass lets it end and the epoch be saved (a batch system's
/// grace period is better spent saving the epoch than losing it), then stops at the next
/// training batch. Tried until a SIGTERM lands in a test pass (here most of each epoch: 16
/// training images, 20,000 test images).
#[test]
fn sigterm_in_a_test_pass_saves_that_epoch() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("mnist");
    train::synthetic::write_mnist(&data, 16, 20000).expect("synthetic MNIST");
    let out = dir.path().join("run");
    let mut landed = false;
    for _ in 0..5 {
        let _ = std::fs::remove_dir_all(&out);
        let child = cnn_past_its_first_epoch(&data, &out);
        let pid = libc::pid_t::try_from(child.id()).expect("a pid");
        // Into epoch 2's test pass (its one training batch takes far less).
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: a plain kill(2) of our own child, which has not been waited for yet.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let output = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&output.stderr);
        landed = err.contains("SIGTERM: stopping once this epoch's test pass ends");
        if landed {
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&output.status),
                Some(libc::SIGTERM),
                "{err}"
            );
            assert!(
                err.contains("stopped by SIGTERM in epoch 3 of 3: epochs 1-2 are saved"),
                "{err}"
            );
            assert_eq!(metrics_without_seconds(&out).len(), 3, "{err}");
            break;
        }
    }
    assert!(landed, "no SIGTERM landed in a test pass");
}

/// Ctrl-C while the data loads (before the epochs train) ends the process at once, leaving the
/// run directory as a run that fails there would: an `--overwrite` puts the old run back, and
/// a run directory the run made (the default `runs/train-mnist-<time>`) goes. A Ctrl-C that
/// lands once the epochs train stops after the batch instead, with the same result in the
/// first epoch, so each case is tried until a Ctrl-C landed while the data loaded.
#[test]
fn ctrl_c_while_the_data_loads_leaves_the_directory_as_it_was() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = synthetic(dir.path());
    let out = dir.path().join("run");
    let done = train_mnist(
        &common(&data, &out)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(done.status.success(), "{}", stderr(&done));
    // Every entry, hidden ones too, with a file's bytes.
    let listing = |dir: &Path| -> Vec<(String, Option<Vec<u8>>)> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_else(|_| Vec::new())
            .into_iter()
            .map(|p: PathBuf| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read(&p).ok())
            })
            .collect();
        entries.sort();
        entries
    };
    let before = listing(&out);
    // 60,000 training images: loading them takes a while after the old run moved aside.
    let big = dir.path().join("big");
    train::synthetic::write_mnist(&big, 60_000, 10_000).expect("synthetic MNIST");
    let ctrl_c_while_loading = |extra: &[&str], cwd: &Path, ready: &dyn Fn() -> bool| -> bool {
        let child = Command::new(BIN)
            .args(["--data-dir", &s(&big), "--model", "lenet5", "--epochs", "1"])
            .args(extra)
            .args(["--device", "cpu"])
            .current_dir(cwd)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("train-mnist starts");
        let stopped = ctrl_c_when(child, ready);
        let err = stderr(&stopped);
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&stopped.status),
            Some(libc_sigint()),
            "{err}"
        );
        // Before the epochs the stop is said, with what it means; in them, the usual message.
        let before = err.contains(
            "stopped by Ctrl-C before the epochs began: nothing was saved, and the run directory \
             is as before the run (one this run made is removed",
        );
        assert!(before != err.contains("Ctrl-C: stopping"), "{err}");
        before
    };
    let aside = out.join(train::rundir::REPLACED);
    let mut while_loading = false;
    for _ in 0..8 {
        while_loading =
            ctrl_c_while_loading(&["--out", &s(&out), "--overwrite"], dir.path(), &|| {
                aside.exists()
            });
        assert_eq!(listing(&out), before, "the old run is back, as it was");
        if while_loading {
            break;
        }
    }
    assert!(while_loading, "no Ctrl-C landed while the data loaded");

    // The default --out, made by this run: gone, as soon as it was locked.
    let cwd = dir.path().join("elsewhere");
    std::fs::create_dir(&cwd).expect("mkdir");
    let runs = cwd.join("runs");
    let locked = || {
        std::fs::read_dir(&runs).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.path().join(train::rundir::LOCK).exists())
        })
    };
    let mut while_loading = false;
    for _ in 0..8 {
        while_loading = ctrl_c_while_loading(&[], &cwd, &locked);
        assert!(listing(&runs).is_empty(), "{:?}", listing(&runs));
        if while_loading {
            break;
        }
    }
    assert!(while_loading, "no Ctrl-C landed while the data loaded");
}

/// The closing line of a run whose `best.safetensors` was damaged since (cut short), and that
/// no later epoch wrote again, names the damage instead of pointing at the file.
#[test]
fn the_closing_line_names_a_damaged_best_checkpoint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = synthetic(dir.path());
    let out = dir.path().join("run");
    let args = [
        "--data-dir",
        &data,
        "--model",
        "lenet5",
        "--epochs",
        "2",
        "--lr",
        "0",
        "--out",
        &s(&out),
    ];
    let first = train_mnist(&args);
    assert!(first.status.success(), "{}", stderr(&first));
    let said = String::from_utf8_lossy(&first.stdout).into_owned();
    assert!(said.contains("weights in "), "{said}");
    let best = out.join(train::rundir::BEST);
    let bytes = std::fs::read(&best).expect("best");
    std::fs::write(&best, &bytes[..1000]).expect("cut best short");
    // A rate of 0 keeps the weights: no epoch beats the first, whose weights best holds (the
    // state holds the last epoch's). Resumed for one more epoch, best is not written again.
    let again = train_mnist(&["--resume", &s(&out), "--epochs", "3"]);
    assert!(again.status.success(), "{}", stderr(&again));
    let said = String::from_utf8_lossy(&again.stdout).into_owned();
    assert!(
        said.contains(&format!(
            "its weights are not there: {} cannot be read",
            best.display()
        )) && !said.contains("weights in "),
        "{said}"
    );
}

/// A warm-up as long as the run is allowed (as PyTorch's `LinearLR` allows it), with a warning
/// that the learning rate never reaches `--lr`; a shorter one goes without a word.
#[test]
fn a_warm_up_as_long_as_the_run_is_said() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = synthetic(dir.path());
    for (warmup, warned) in [("1", true), ("2", true), ("0", false)] {
        let out = dir.path().join(format!("run-{warmup}"));
        let ran = train_mnist(&[
            "--data-dir",
            &data,
            "--model",
            "lenet5",
            "--epochs",
            "1",
            "--warmup-epochs",
            warmup,
            "--out",
            &s(&out),
        ]);
        let err = stderr(&ran);
        assert!(ran.status.success(), "{err}");
        assert_eq!(
            err.contains("does not end within the run, so the learning rate never reaches --lr"),
            warned,
            "{err}"
        );
    }
}

/// A second run cannot write into a directory a live run holds; a finished run's directory is
/// refused unless `--resume` or `--overwrite`; errors about `--out` come before the data is
/// read.
#[test]
fn one_run_owns_its_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = synthetic(dir.path());
    let out = dir.path().join("run");
    let mut args = common(&data, &out);
    let epochs = args.iter().position(|a| a == "--epochs").expect("--epochs") + 1;
    // Long enough to be alive while the second run starts and tries the lock again for 5 s.
    args[epochs] = "100000".into();
    /// Killed when dropped: the long run never outlives a failed assertion.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let live = KillOnDrop(
        Command::new(BIN)
            .args(&args)
            .args(["--device", "cpu", "--workers", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("train-mnist starts"),
    );
    let waited = Instant::now();
    while !out.join(train::rundir::CONFIG).exists() {
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "the first run never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = train_mnist(&["--data-dir", &data, "--out", &s(&out), "--epochs", "1"]);
    drop(live);
    assert!(!second.status.success());
    assert!(
        stderr(&second).contains("in use by another run"),
        "{}",
        stderr(&second)
    );

    let done = dir.path().join("done");
    let first = train_mnist(&[
        "--data-dir",
        &data,
        "--out",
        &s(&done),
        "--epochs",
        "1",
        "--model",
        "lenet5",
    ]);
    assert!(first.status.success(), "{}", stderr(&first));
    let best = std::fs::read(done.join(train::rundir::BEST)).expect("best");
    let again = train_mnist(&["--data-dir", &data, "--out", &s(&done), "--epochs", "1"]);
    assert!(!again.status.success());
    let err = stderr(&again);
    assert!(
        err.contains("already holds a run")
            && err.contains("continue it with train-mnist --resume")
            && err.contains("--overwrite"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(done.join(train::rundir::BEST)).expect("best"),
        best
    );
    // An --overwrite run that fails in its first epoch, after writing its configuration (here
    // its loss becomes NaN), leaves the finished run as it was.
    let files = listing(&done);
    let failed = train_mnist(&[
        "--data-dir",
        &data,
        "--out",
        &s(&done),
        "--epochs",
        "1",
        "--lr",
        "1e30",
        "--overwrite",
    ]);
    assert!(!failed.status.success());
    assert!(stderr(&failed).contains("NaN"), "{}", stderr(&failed));
    assert!(
        stderr(&failed).contains("replaced run is back"),
        "{}",
        stderr(&failed)
    );
    assert_eq!(listing(&done), files);
    assert_eq!(
        std::fs::read(done.join(train::rundir::BEST)).expect("best"),
        best
    );
    let replaced = train_mnist(&[
        "--data-dir",
        &data,
        "--out",
        &s(&done),
        "--epochs",
        "1",
        "--model",
        "lenet5",
        "--seed",
        "9",
        "--overwrite",
    ]);
    assert!(replaced.status.success(), "{}", stderr(&replaced));
    assert_ne!(
        std::fs::read(done.join(train::rundir::BEST)).expect("best"),
        best
    );
    // Nothing of the old run is left beside the new one: one event file, no folder aside.
    let now = listing(&done);
    let events = now
        .iter()
        .filter(|n| n.starts_with(train::rundir::EVENTS_PREFIX))
        .count();
    assert!(
        events == 1 && !now.iter().any(|n| n == train::rundir::REPLACED),
        "{now:?}"
    );

    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").expect("write");
    let early = train_mnist(&["--data-dir", "/nonexistent/mnist", "--out", &s(&file)]);
    assert!(!early.status.success());
    let err = stderr(&early);
    assert!(
        err.contains("--out") && !err.contains("nonexistent"),
        "{err}"
    );
}

/// With --overwrite, the replaced run goes as soon as the new run has saved its first epoch,
/// while it trains on.
#[test]
fn the_replaced_run_goes_with_the_first_saved_epoch() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = synthetic(dir.path());
    let out = dir.path().join("run");
    let mut args = common(&data, &out);
    let epochs = args.iter().position(|a| a == "--epochs").expect("--epochs") + 1;
    args[epochs] = "1".into();
    let first = train_mnist(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(first.status.success(), "{}", stderr(&first));
    args[epochs] = "5000".into(); // killed long before the end
    let mut live = Command::new(BIN)
        .args(&args)
        .args([
            "--overwrite",
            "--seed",
            "5",
            "--device",
            "cpu",
            "--workers",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("train-mnist starts");
    let aside = out.join(train::rundir::REPLACED);
    let waited = Instant::now();
    while !aside.exists() && waited.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let set_aside = aside.exists() || out.join(train::rundir::STATE).exists();
    while aside.exists() && waited.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let alive = live.try_wait().expect("wait").is_none();
    let _ = live.kill();
    let _ = live.wait();
    assert!(set_aside, "the old run was never set aside");
    assert!(!aside.exists(), "the replaced run is still there");
    assert!(alive, "the new run ended before the replaced run went");
    assert!(out.join(train::rundir::STATE).exists());
}

/// A run made by another program is not resumed; the error names that program.
#[test]
fn resume_refuses_another_programs_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = synthetic(dir.path());
    let out = dir.path().join("run");
    let first = train_mnist(&[
        "--data-dir",
        &data,
        "--out",
        &s(&out),
        "--epochs",
        "1",
        "--model",
        "lenet5",
    ]);
    assert!(first.status.success(), "{}", stderr(&first));
    let path = out.join(train::rundir::STATE);
    let (tensors, mut metadata) = layers::checkpoint::read_with_metadata(&path).expect("state");
    for json in metadata.values_mut() {
        *json = json.replace("\"train-mnist\"", "\"finetune-resnet50\"");
    }
    // As the other program writes it, with a checksum of its own (this one's covers the
    // resume state).
    metadata.remove(layers::checkpoint::CHECKSUM_KEY);
    // Written past layers::checkpoint, which would refuse what the test plants.
    safetensors::serialize_to_file(&tensors, Some(metadata), &path).expect("rewrite");
    let resumed = train_mnist(&["--resume", &s(&out), "--epochs", "2"]);
    assert!(!resumed.status.success());
    let err = stderr(&resumed);
    assert!(err.contains("made by finetune-resnet50"), "{err}");
}

/// `--resume` takes the same command again: flags with the saved value pass, a different value
/// is named with both values.
#[test]
fn resume_accepts_the_same_flags_and_names_a_changed_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = synthetic(dir.path());
    let out = dir.path().join("run");
    let args = [
        "--data-dir",
        &data,
        "--out",
        &s(&out),
        "--model",
        "lenet5",
        "--seed",
        "3",
    ];
    let threads = |n: &str, more: &[&str]| {
        Command::new(BIN)
            .args([&args[..], more, &["--device", "cpu", "--workers", "2"]].concat())
            .env("RAYON_NUM_THREADS", n)
            .output()
            .expect("train-mnist starts")
    };
    let first = threads("1", &["--epochs", "1"]);
    assert!(first.status.success(), "{}", stderr(&first));
    // On other compute threads the gradients' sums run in another order: accepted, and said.
    let same = threads("2", &["--epochs", "2", "--resume", &s(&out)]);
    assert!(same.status.success(), "{}", stderr(&same));
    let err = stderr(&same);
    assert!(
        err.contains("trained with 1 compute thread(s) and goes on with 2")
            && err.contains("RAYON_NUM_THREADS=1"),
        "{err}"
    );
    let changed = train_mnist(&["--resume", &s(&out), "--epochs", "3", "--seed", "4"]);
    assert!(!changed.status.success());
    let err = stderr(&changed);
    assert!(err.contains("--seed 4 (the run has 3)"), "{err}");
    // Fewer epochs than the run has trained: refused, and the run's configuration stays.
    let config = std::fs::read(out.join(train::rundir::CONFIG)).expect("config");
    let fewer = train_mnist(&["--resume", &s(&out), "--epochs", "1"]);
    assert!(!fewer.status.success());
    let err = stderr(&fewer);
    assert!(
        err.contains("--epochs 1") && err.contains("already trained 2 epochs"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(out.join(train::rundir::CONFIG)).expect("config"),
        config
    );
    // As many epochs as it has trained: nothing to do, said so before any data is loaded (a
    // --data-dir that is gone does not matter), and the run is unchanged: no file is added.
    let state = std::fs::read(out.join(train::rundir::STATE)).expect("state");
    let files = listing(&out);
    let gone = dir.path().join("gone");
    let done = train_mnist(&[
        "--resume",
        &s(&out),
        "--epochs",
        "2",
        "--data-dir",
        &s(&gone),
    ]);
    assert!(done.status.success(), "{}", stderr(&done));
    let said = String::from_utf8_lossy(&done.stdout);
    assert!(
        said.contains("already trained all 2 epochs: nothing to train")
            && said.contains("best test accuracy"),
        "{said}"
    );
    assert_eq!(
        std::fs::read(out.join(train::rundir::STATE)).expect("state"),
        state
    );
    assert_eq!(listing(&out), files);
}

/// Output into a closed pipe (`train-mnist ... | head -1`) ends the printing, not the run.
#[test]
fn a_closed_stdout_does_not_stop_the_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = synthetic(dir.path());
    let out = dir.path().join("run");
    let mut child = Command::new(BIN)
        .args([
            "--data-dir",
            &data,
            "--out",
            &s(&out),
            "--epochs",
            "2",
            "--model",
            "lenet5",
        ])
        .args(["--device", "cpu"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("train-mnist starts");
    drop(child.stdout.take());
    let done = child.wait_with_output().expect("wait");
    assert!(done.status.success(), "{}", stderr(&done));
    assert!(out.join(train::rundir::LAST).is_file());
    assert_eq!(metrics_without_seconds(&out).len(), 3);
}

/// Output lost to a full disk (`> /dev/full`) ends with an error naming standard output, not
/// status 0; the run's files are complete, as a closed pipe leaves them.
#[test]
fn stdout_on_a_full_disk_is_an_error_after_the_work() {
    let full = Path::new("/dev/full");
    if !full.exists() {
        eprintln!("skipped: no /dev/full here");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let data = synthetic(dir.path());
    let out = dir.path().join("run");
    let args = [
        "--data-dir",
        &data,
        "--out",
        &s(&out),
        "--epochs",
        "1",
        "--model",
        "lenet5",
        "--device",
        "cpu",
    ];
    let to_full = |args: &[&str]| {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(full)
            .expect("/dev/full");
        Command::new(BIN)
            .args(args)
            .stdout(file)
            .output()
            .expect("train-mnist runs")
    };
    let done = to_full(&args);
    assert!(!done.status.success(), "exit status 0 with its output lost");
    let err = stderr(&done);
    assert!(
        err.contains("standard output could not be written"),
        "{err}"
    );
    assert!(err.contains("No space left on device"), "{err}");
    assert!(out.join(train::rundir::LAST).is_file());
    assert_eq!(metrics_without_seconds(&out).len(), 2);
    // predict's answer is its output: lost, it is an error too.
    let img = dir.path().join("digit.png");
    image::GrayImage::from_pixel(28, 28, image::Luma([200]))
        .save(&img)
        .expect("png");
    let done = to_full(&["predict", "--run", &s(&out), &s(&img)]);
    assert!(
        !done.status.success(),
        "predict's lost answer ended with status 0"
    );
    assert!(
        stderr(&done).contains("standard output could not be written"),
        "{}",
        stderr(&done)
    );
}

/// A failed sync of the run's folder after a file is renamed into it (a failing disk: `EIO`,
/// injected by `strace` into the syncs of that folder only) stops the run naming the folder and
/// the file, as a failed sync of the file itself does; a file system that cannot sync a folder
/// (`EINVAL`) is no error.
#[test]
fn a_failed_sync_of_the_run_folder_stops_the_run() {
    let traced = Command::new("strace")
        .args(["-qq", "-o", "/dev/null", "true"])
        .status();
    if !traced.is_ok_and(|s| s.success()) {
        eprintln!("skipped: strace cannot run here");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let data = synthetic(dir.path());
    let root = dir.path().canonicalize().expect("canonical temp dir");
    let run = |name: &str, error: &str| {
        let out = root.join(name);
        let mut args = common_epochs(&data, &out, "1");
        args.extend(["--device", "cpu"].map(String::from));
        let done = Command::new("strace")
            .args(["-f", "-qq", "-o", "/dev/null", "-P", &s(&out)])
            .args([
                "-e",
                "trace=fsync",
                "-e",
                &format!("inject=fsync:error={error}"),
            ])
            .arg(BIN)
            .args(&args)
            .output()
            .expect("strace runs train-mnist");
        (out, done)
    };
    let (out, done) = run("failing", "EIO");
    let err = stderr(&done);
    assert!(!done.status.success(), "a failed folder sync passed: {err}");
    assert!(
        err.contains(&format!("cannot sync the folder {}", s(&out)))
            && err.contains("Input/output error"),
        "{err}"
    );
    assert!(!out.exists(), "a run that saved nothing left {}", s(&out));
    let (out, done) = run("unsyncable", "EINVAL");
    assert!(done.status.success(), "{}", stderr(&done));
    assert!(out.join(train::rundir::BEST).is_file());
}

/// `--help` opens with what the program does.
#[test]
fn help_describes_the_program() {
    let out = Command::new(BIN)
        .arg("--help")
        .output()
        .expect("train-mnist starts");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("Train a CNN on MNIST"), "{text}");
    assert!(
        text.contains("--overwrite") && text.contains("--betas"),
        "{text}"
    );
    assert!(
        text.contains("evaluate  Evaluate a run's checkpoint")
            && text.contains("predict   Print the top-5 classes"),
        "{text}"
    );
}

/// Every flag with 0, 1, negative, huge, non-numeric and empty values: clear errors or runs,
/// never a panic, an abort or a hang.
#[test]
fn extreme_flag_values_never_panic() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = synthetic(dir.path());
    let program = PathBuf::from(BIN);
    let flags = flag_scan::value_flags(&program, &[]);
    for expected in [
        "--epochs",
        "--lr",
        "--workers",
        "--limit-train",
        "--milestones",
    ] {
        assert!(
            flags.iter().any(|f| f == expected),
            "{expected} not in {flags:?}"
        );
    }
    let base = [
        "--data-dir",
        &data,
        "--model",
        "lenet5",
        "--epochs",
        "1",
        "--limit-train",
        "16",
        "--limit-test",
        "20",
        "--device",
        "cpu",
        "--workers",
        "1",
        "--overwrite",
    ];
    let failures = flag_scan::scan(&program, &[], &base, dir.path(), Duration::from_secs(120));
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A file where a directory belongs (--data-dir, --out, --resume) is named as such, and so is
/// an --out that links to nothing (creating it said only "File exists").
#[test]
fn a_file_given_for_a_directory_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = synthetic(dir.path());
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "mine").expect("file");
    let dangling = dir.path().join("dangling");
    #[cfg(unix)]
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).expect("link");
    let idx = Path::new(&data).join("train-images-idx3-ubyte");
    for (args, expected) in [
        (
            vec!["--data-dir".to_string(), s(&idx)],
            "is a file: MNIST's --data-dir is the directory",
        ),
        (
            vec!["--data-dir".into(), data.clone(), "--out".into(), s(&file)],
            "a file, not a directory",
        ),
        (
            vec!["--resume".into(), s(&file)],
            "a file, not a run directory",
        ),
        (
            vec![
                "--data-dir".into(),
                data.clone(),
                "--out".into(),
                s(&dangling),
            ],
            "nowhere, which does not exist (or cannot be reached): make that folder",
        ),
    ] {
        let run = train_mnist(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let err = stderr(&run);
        assert!(
            !run.status.success() && err.contains(expected),
            "{args:?}: {err}"
        );
    }
    assert_eq!(std::fs::read_to_string(&file).expect("file"), "mine");
}

/// A transform whose images the model cannot take (here a 32x32 crop for the 28x28 MNIST
/// CNN) is refused before training, naming the flag, for the test transform too (which would
/// otherwise fail only after a whole training epoch).
#[test]
fn images_the_model_cannot_take_are_refused_before_training() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = synthetic(dir.path());
    for flag in ["--train-transform", "--test-transform"] {
        let out = dir.path().join("run");
        let run = train_mnist(&[
            "--data-dir",
            &data,
            "--model",
            "cnn-mnist",
            flag,
            "random-crop:32:4",
            "--out",
            &s(&out),
        ]);
        let err = stderr(&run);
        assert!(!run.status.success(), "{err}");
        assert!(
            err.contains(&format!(
                "cnn-mnist does not fit the 1x32x32 images that {flag} random-crop:32:4 gives"
            )) && err.contains(&format!(
                "a resize:28,center-crop:28 step ({flag} \
                 random-crop:32:4,resize:28,center-crop:28,to-tensor), or choose"
            )),
            "{err}"
        );
        assert!(!out.exists(), "{err}");
    }
    // A resize of the flag's own gives way to the one suggested (not `resize:14,resize:28`).
    let out = dir.path().join("run");
    let run = train_mnist(&[
        "--data-dir",
        &data,
        "--model",
        "cnn-mnist",
        "--test-transform",
        "resize:14,normalize:mnist",
        "--out",
        &s(&out),
    ]);
    let err = stderr(&run);
    assert!(
        !run.status.success()
            && err
                .contains("(--test-transform resize:28,center-crop:28,normalize:mnist), or choose"),
        "{err}"
    );
}

/// A transform that does not parse is refused, naming its flag, before any data is read (here
/// a data directory that does not exist, which would otherwise be what the run says).
#[test]
fn a_transform_that_does_not_parse_is_refused_before_the_data_is_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("no-data");
    for flag in ["--train-transform", "--test-transform"] {
        let out = dir.path().join("run");
        let run = train_mnist(&[
            "--data-dir",
            &s(&missing),
            flag,
            "flip:2,normalize:mnist",
            "--out",
            &s(&out),
        ]);
        let err = stderr(&run);
        assert!(!run.status.success(), "{err}");
        assert!(
            err.contains(&format!("{flag} \"flip:2,normalize:mnist\""))
                && err.contains("p must be in [0, 1]")
                && !err.contains("no-data"),
            "{err}"
        );
        assert!(!out.exists(), "{err}");
    }
}

/// `--sync-bn` in one process (no MPI launcher) says that batch norm is then plain.
#[test]
fn sync_bn_in_one_process_says_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = synthetic(dir.path());
    let out = dir.path().join("run");
    let mut args = common(&data, &out);
    args.extend(["--sync-bn", "--limit-train", "32"].map(String::from));
    let at = args.iter().position(|a| a == "--epochs").expect("--epochs");
    args[at + 1] = "1".into();
    let run = train_mnist(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(run.status.success(), "{}", stderr(&run));
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(said.contains("--sync-bn: one process"), "{said}");
}

/// `evaluate` on a run that saved no epoch says so (not a missing-file error).
#[test]
fn evaluate_of_a_run_without_an_epoch_says_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    std::fs::create_dir(&run).expect("run dir");
    let config =
        train::config::RunConfig::new("train-mnist", train::config::DatasetKind::Mnist, "lenet5");
    std::fs::write(
        run.join(train::rundir::CONFIG),
        serde_json::to_vec(&config).expect("json"),
    )
    .expect("config");
    let out = Command::new(BIN)
        .args(["evaluate", "--run", &s(&run), "--device", "cpu"])
        .output()
        .expect("train-mnist starts");
    let err = stderr(&out);
    assert!(
        !out.status.success()
            && err.contains("no best.safetensors: the run has not saved an epoch"),
        "{err}"
    );
}

/// `--drop-last` with a batch larger than the training images would train no step: refused
/// before training, naming both flags, and the --out it made is gone again.
#[test]
fn drop_last_leaving_no_batch_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = synthetic(dir.path());
    let out = dir.path().join("run");
    let mut args = common(&data, &out);
    let at = args
        .iter()
        .position(|a| a == "--batch-size")
        .expect("--batch-size");
    args[at + 1] = "128".into();
    args.push("--drop-last".into());
    let run = train_mnist(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let err = stderr(&run);
    assert!(!run.status.success(), "{err}");
    assert!(
        err.contains("--drop-last with --batch-size 128") && err.contains("no step would train"),
        "{err}"
    );
    assert!(!out.exists(), "{err}");
}

/// Each epoch's files are written on a second thread while the next epoch trains: a write that
/// fails (here `curves.png` is a directory) still ends the run with an error naming the file
/// and how to go on, at the latest at the next epoch's end (the epoch training stops after the
/// batch in which the write failed), and the files written before it stay.
#[test]
fn a_failed_write_ends_the_run_with_an_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let data = synthetic(dir.path());
    let out = dir.path().join("run");
    std::fs::create_dir_all(out.join(train::rundir::CURVES)).expect("a directory in the way");
    let args = common(&data, &out);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = train_mnist(&args);
    let err = stderr(&run);
    assert!(!run.status.success(), "the run should fail: {err}");
    assert!(
        err.contains(train::rundir::CURVES),
        "the error names the file: {err}"
    );
    assert!(!err.contains("panicked"), "no panic: {err}");
    assert!(
        err.contains("could not be written, so the run stopped; --resume"),
        "{err}"
    );
    let metrics = metrics_without_seconds(&out);
    assert_eq!(
        metrics.len(),
        2,
        "the header and epoch 1, written before the picture: {metrics:?}"
    );
    assert!(
        out.join(train::rundir::LAST).is_file(),
        "epoch 1's checkpoint stays"
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        !stdout.contains("epoch 3/"),
        "the run stops at the next epoch's end: {stdout}"
    );
}

/// A user's error (here a --data-dir that is not there) prints without a backtrace even with
/// RUST_BACKTRACE=1 set, which stays for panics; RUST_LIB_BACKTRACE=1 still asks for one.
#[test]
fn errors_print_without_a_backtrace_unless_asked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let failed = |lib: Option<&str>| {
        let mut command = Command::new(BIN);
        command
            .args(["--data-dir", &s(&dir.path().join("nowhere"))])
            .args(["--out", &s(&dir.path().join("run")), "--device", "cpu"])
            .env("RUST_BACKTRACE", "1")
            .env_remove("RUST_LIB_BACKTRACE");
        if let Some(value) = lib {
            command.env("RUST_LIB_BACKTRACE", value);
        }
        let out = command.output().expect("train-mnist starts");
        assert!(!out.status.success());
        stderr(&out)
    };
    let err = failed(None);
    assert!(
        err.contains("nowhere") && !err.contains("Stack backtrace"),
        "{err}"
    );
    let err = failed(Some("1"));
    assert!(err.contains("Stack backtrace"), "{err}");
}

/// A resource limit of the child process (`ulimit -v`, `ulimit -f`).
enum Limit {
    AddressSpace,
    FileSize,
}

/// Sets `which` to `bytes` (the soft limit) in the process `command` starts.
fn limit(command: &mut Command, which: Limit, bytes: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe and touches nothing of this process's memory.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: libc::RLIM_INFINITY,
            };
            let set = match which {
                Limit::AddressSpace => libc::setrlimit(libc::RLIMIT_AS, &limit),
                Limit::FileSize => libc::setrlimit(libc::RLIMIT_FSIZE, &limit),
            };
            if set == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// Memory that runs out (here a 1.5 GB address-space limit, `ulimit -v`, and a batch of 4,000
/// images, whose convolution columns alone take 2.6 GB) ends the run with an error naming the
/// batch sizes to lower and status 1, not Rust's abort (status 134); the folder is taken by the
/// next run with a smaller batch.
#[test]
fn running_out_of_memory_is_an_error_naming_the_batch_size() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("mnist");
    train::synthetic::write_mnist(&data, 4000, 40).expect("synthetic MNIST");
    let out = dir.path().join("run");
    let args = |batch: &str| {
        [
            "--data-dir",
            &s(&data),
            "--out",
            &s(&out),
            "--epochs",
            "1",
            "--batch-size",
            batch,
        ]
        .map(String::from)
    };
    let mut command = Command::new(BIN);
    command
        .args(args("4000"))
        .args(["--device", "cpu"])
        .env("RUST_BACKTRACE", "0");
    limit(&mut command, Limit::AddressSpace, 1_500_000_000);
    let failed = command.output().expect("train-mnist starts");
    let err = stderr(&failed);
    assert_eq!(failed.status.code(), Some(1), "{:?}: {err}", failed.status);
    assert!(err.contains("Error: out of memory: "), "{err}");
    assert!(
        err.contains("--batch-size (now 4000)") && err.contains("--test-batch-size (now 1000)"),
        "{err}"
    );
    assert!(!err.contains("memory allocation of"), "{err}");
    let again = train_mnist(&args("500").iter().map(String::as_str).collect::<Vec<_>>());
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(out.join(train::rundir::BEST).is_file());
}

/// A file-size limit (`ulimit -f`, here 100 KB: LeNet-5's state is 180 KB, the first epoch's
/// TensorBoard events with its two pictures more than 100 KB) fails the write with "File too
/// large", naming the file, and status 1, as in Python; SIGXFSZ killed the run without a word.
#[test]
fn a_file_size_limit_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = synthetic(dir.path());
    let out = dir.path().join("run");
    let mut command = Command::new(BIN);
    command.args(common(&data, &out)).args(["--device", "cpu"]);
    limit(&mut command, Limit::FileSize, 100_000);
    let failed = command.output().expect("train-mnist starts");
    let err = stderr(&failed);
    assert_eq!(failed.status.code(), Some(1), "{:?}: {err}", failed.status);
    assert!(err.contains("File too large"), "{err}");
    assert!(err.contains(&format!("cannot write {}/", s(&out))), "{err}");
    // No epoch was saved: the directory the run made goes, with the pictures and events it
    // wrote before the state.
    assert!(err.contains("no epoch was saved"), "{err}");
    assert!(
        !out.exists(),
        "{:?}",
        std::fs::read_dir(&out).map(|d| d.count())
    );
}

/// A finished run whose last epoch's checkpoint was not written (a failed write or a kill after
/// the state): `--resume` says there is nothing to train and writes the checkpoint again from
/// the state, removing `evaluate`'s outputs of the weights it held.
#[test]
fn resuming_a_finished_run_completes_its_checkpoints() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_, run) = one_epoch_run(dir.path());
    let last = run.join(train::rundir::LAST);
    let epoch1 = std::fs::read(&last).expect("last");
    let more = train_mnist(&["--resume", &s(&run), "--epochs", "2"]);
    assert!(more.status.success(), "{}", stderr(&more));
    let epoch2 = std::fs::read(&last).expect("last");
    assert_ne!(epoch1, epoch2);
    let config = std::fs::read(run.join(train::rundir::CONFIG)).expect("config.json");
    let classes = std::fs::read(run.join(train::rundir::CLASSES)).expect("classes.json");
    // Epoch 2's checkpoint and curves lost: last is epoch 1's, and evaluated as such.
    std::fs::write(&last, &epoch1).expect("older last");
    std::fs::remove_file(run.join(train::rundir::CURVES)).expect("remove curves.png");
    let evaluated = Command::new(BIN)
        .args([
            "evaluate",
            "--run",
            &s(&run),
            "--weights",
            "last",
            "--device",
            "cpu",
        ])
        .output()
        .expect("evaluate runs");
    assert!(evaluated.status.success(), "{}", stderr(&evaluated));
    assert!(run.join("evaluation-last.json").is_file());
    let again = train_mnist(&["--resume", &s(&run), "--epochs", "2"]);
    assert!(again.status.success(), "{}", stderr(&again));
    let said = String::from_utf8_lossy(&again.stdout);
    assert!(said.contains("nothing to train"), "{said}");
    assert_eq!(std::fs::read(&last).expect("last"), epoch2, "{said}");
    assert!(!run.join("evaluation-last.json").exists(), "{said}");
    assert!(
        run.join(train::rundir::CURVES).is_file(),
        "curves.png drawn again"
    );
    // config.json and classes.json removed: written again from the state, as they were.
    for name in [train::rundir::CONFIG, train::rundir::CLASSES] {
        std::fs::remove_file(run.join(name)).expect("remove");
    }
    let again = train_mnist(&["--resume", &s(&run), "--epochs", "2"]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        std::fs::read(run.join(train::rundir::CONFIG)).expect("config.json"),
        config
    );
    assert_eq!(
        std::fs::read(run.join(train::rundir::CLASSES)).expect("classes.json"),
        classes
    );
    // Already whole: nothing written again is said, and nothing removed.
    let whole = train_mnist(&["--resume", &s(&run), "--epochs", "2"]);
    assert!(!String::from_utf8_lossy(&whole.stdout).contains("removed"));
}

/// Resuming for more epochs under a schedule that spans the run (cosine, onecycle) says that
/// the rest of it follows the new length; under a constant rate nothing is said.
#[test]
fn a_longer_resume_of_a_cosine_run_is_said() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = synthetic(dir.path());
    for (schedule, warned) in [("cosine", true), ("constant", false)] {
        let out = s(&dir.path().join(schedule));
        let first = train_mnist(&[
            "--data-dir",
            &data,
            "--model",
            "lenet5",
            "--epochs",
            "1",
            "--schedule",
            schedule,
            "--out",
            &out,
        ]);
        assert!(first.status.success(), "{}", stderr(&first));
        let longer = train_mnist(&["--resume", &out, "--epochs", "2"]);
        let err = stderr(&longer);
        assert!(longer.status.success(), "{err}");
        assert_eq!(
            err.contains("spans the whole run, so the rest of it follows the new length"),
            warned,
            "{schedule}: {err}"
        );
        // Finished at its new length: nothing to train, and nothing to warn about.
        let again = train_mnist(&["--resume", &out, "--epochs", "2"]);
        let err = stderr(&again);
        assert!(
            again.status.success() && !err.contains("spans the whole run"),
            "{err}"
        );
    }
}

/// `--test-fraction` is for image folders; MNIST has its own test split, so it is refused,
/// not ignored.
#[test]
fn a_test_fraction_for_mnist_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = synthetic(dir.path());
    let out = dir.path().join("run");
    let ran = train_mnist(&[
        "--data-dir",
        &data,
        "--test-fraction",
        "0.3",
        "--out",
        &s(&out),
    ]);
    let err = stderr(&ran);
    assert!(
        !ran.status.success() && err.contains("MNIST comes with its own test split"),
        "{err}"
    );
    assert!(!out.exists(), "a failed start leaves no directory");
}

/// A one-epoch run in `dir/run` on synthetic MNIST in `dir/mnist`: the data and the run.
fn one_epoch_run(dir: &Path) -> (String, PathBuf) {
    let data = synthetic(dir);
    let run = dir.join("run");
    let mut args = common(&data, &run);
    let epochs = args.iter().position(|a| a == "--epochs").expect("--epochs") + 1;
    args[epochs] = "1".into();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let trained = train_mnist(&args);
    assert!(trained.status.success(), "{}", stderr(&trained));
    (data, run)
}

/// A state whose network is not the run's (a tensor missing, its checksum made anew, as an
/// edit would), with both checkpoints gone: `--resume` (of the run going on, and of the run as
/// finished) and `evaluate` refuse it before writing them from it (they wrote checkpoints
/// PyTorch's strict load refuses, then failed, or succeeded; a tester and a reviewer).
#[test]
fn a_state_of_another_network_writes_no_checkpoint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_, run) = one_epoch_run(dir.path());
    let state = run.join(train::rundir::STATE);
    let (mut tensors, mut metadata) =
        layers::checkpoint::read_with_metadata(&state).expect("read the state");
    let gone = (tensors.keys())
        .find(|k| k.starts_with("model.") && k.ends_with(".bias"))
        .expect("a bias")
        .clone();
    tensors.remove(&gone);
    metadata.retain(|k, _| !k.starts_with(layers::checkpoint::CHECKSUM_KEY));
    layers::checkpoint::save_with_metadata(&tensors, Some(metadata), &state).expect("rewrite");
    for name in [train::rundir::BEST, train::rundir::LAST] {
        std::fs::remove_file(run.join(name)).expect("remove");
    }
    let name = gone.trim_start_matches("model.");
    // Refused by `who`, naming the tensor, and no checkpoint written.
    let refused = |out: Output, who: &str, says: &str| {
        let err = stderr(&out);
        assert!(
            !out.status.success() && err.contains(says) && err.contains(name),
            "{who}: {err}"
        );
        assert!(!err.contains("written again from"), "{who}: {err}");
        for file in [train::rundir::BEST, train::rundir::LAST] {
            assert!(!run.join(file).exists(), "{file} written by {who}");
        }
    };
    let resumed = train_mnist(&["--resume", &s(&run), "--epochs", "2"]);
    refused(
        resumed,
        "--resume",
        "restoring the model from the resume state",
    );
    // `evaluate`, which writes missing checkpoints from the state too, says why it does not.
    let evaluated = Command::new(BIN)
        .args(["evaluate", "--run", &s(&run), "--device", "cpu"])
        .output()
        .expect("evaluate runs");
    refused(evaluated, "evaluate", "its weights are not those of the");
    // A resume of the finished run (which `evaluate` advises where both checkpoints are gone:
    // it writes them and trains no more) refuses it too.
    let finished = train_mnist(&["--resume", &s(&run)]);
    refused(
        finished,
        "a finished run's --resume",
        "its weights are not those of the",
    );
}

/// One bit of a weight flipped on the disk (the value still finite) in `best`, `last` or the
/// state: `evaluate`, `predict` and `--resume` refuse the file, naming it as damaged, and the
/// other files still serve (before, a checkpoint damaged so was scored, and a resume trained
/// on from the damaged optimizer state; a tester).
#[test]
fn a_checkpoint_damaged_on_the_disk_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (run, image) = one_epoch_run_and_digit(dir.path());
    let flip = |name: &str| {
        let path = run.join(name);
        let mut bytes = std::fs::read(&path).expect("checkpoint");
        let at = bytes.len() - 2; // the last tensor's last value, a high mantissa bit
        bytes[at] ^= 0x04;
        std::fs::write(&path, &bytes).expect("write");
        bytes
    };
    let damaged = |out: &Output, name: &str| {
        let err = stderr(out);
        assert!(
            !out.status.success() && err.contains(&format!("{name} is damaged")),
            "{name}: {err}"
        );
    };
    let best = flip(train::rundir::BEST);
    let command = |args: &[&str]| Command::new(BIN).args(args).output().expect("starts");
    let evaluated = command(&["evaluate", "--run", &s(&run), "--device", "cpu"]);
    damaged(&evaluated, train::rundir::BEST);
    let predicted = command(&["predict", "--run", &s(&run), &s(&image)]);
    damaged(&predicted, train::rundir::BEST);
    assert_eq!(
        std::fs::read(run.join(train::rundir::BEST)).expect("best"),
        best
    );
    let last_args = [
        "evaluate",
        "--run",
        &s(&run),
        "--weights",
        "last",
        "--device",
        "cpu",
    ];
    let last = command(&last_args);
    assert!(last.status.success(), "{}", stderr(&last));
    // A config.json cut short: the way to the settings the state keeps is said, and taken.
    let config = run.join(train::rundir::CONFIG);
    let text = std::fs::read(&config).expect("config");
    std::fs::write(&config, &text[..text.len() / 2]).expect("cut");
    let cut = command(&last_args);
    assert!(
        !cut.status.success()
            && stderr(&cut).contains("config.json is not a run configuration: put the run's")
            && stderr(&cut).contains("or remove it"),
        "{}",
        stderr(&cut)
    );
    std::fs::remove_file(&config).expect("remove");
    let from_state = command(&last_args);
    assert!(from_state.status.success(), "{}", stderr(&from_state));
    flip(train::rundir::STATE);
    let resumed = train_mnist(&["--resume", &s(&run), "--epochs", "2"]);
    damaged(&resumed, train::rundir::STATE);
}

/// [`one_epoch_run`], and a digit's picture beside it for `predict`.
fn one_epoch_run_and_digit(dir: &Path) -> (PathBuf, PathBuf) {
    let (_, run) = one_epoch_run(dir);
    let image = dir.join("digit.png");
    image::GrayImage::from_pixel(28, 28, image::Luma([200]))
        .save(&image)
        .expect("png");
    (run, image)
}

/// A run's file that is a named pipe, or a link to a device, is refused naming it: no wait
/// without end on the pipe, no reading of `/dev/zero` until memory runs out.
#[test]
fn a_run_file_that_is_a_pipe_or_a_device_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (run, image) = one_epoch_run_and_digit(dir.path());
    let resume = ["--resume", &s(&run), "--epochs", "2"];
    let evaluate = ["evaluate", "--run", &s(&run)];
    let predict = ["predict", "--run", &s(&run), &s(&image)];
    let cases: [(&str, &[&str]); 5] = [
        (train::rundir::STATE, &resume),
        (train::rundir::LOCK, &resume),
        (train::rundir::BEST, &evaluate),
        (train::rundir::CONFIG, &evaluate),
        (train::rundir::CLASSES, &predict),
    ];
    for (name, command) in cases {
        let path = run.join(name);
        let aside = dir.path().join("aside");
        let existed = path.exists();
        if existed {
            std::fs::rename(&path, &aside).expect("move aside");
        }
        let made = Command::new("mkfifo").arg(&path).status().expect("mkfifo");
        assert!(made.success());
        let mut child = Command::new(BIN)
            .args(command)
            .args(["--device", "cpu"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("train-mnist starts");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while child.try_wait().expect("wait").is_none() {
            if std::time::Instant::now() > deadline {
                child.kill().expect("kill");
                panic!("{command:?} with {name} a named pipe did not end");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let out = child.wait_with_output().expect("output");
        let err = stderr(&out);
        assert!(
            !out.status.success() && err.contains(&s(&path)) && err.contains("a pipe"),
            "{name}: {err}"
        );
        std::fs::remove_file(&path).expect("remove the pipe");
        if existed {
            std::fs::rename(&aside, &path).expect("put back");
        }
    }
    // --weights naming a device.
    let zero = dir.path().join("zero.safetensors");
    std::os::unix::fs::symlink("/dev/zero", &zero).expect("link");
    let evaluate = |extra: &[&str]| {
        Command::new(BIN)
            .args(["evaluate", "--run", &s(&run), "--device", "cpu"])
            .args(extra)
            .output()
            .expect("train-mnist starts")
    };
    let out = evaluate(&["--weights", &s(&zero)]);
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains(&s(&zero)) && err.contains("a device"),
        "{err}"
    );
    // The run is whole again: evaluate reads it.
    let out = evaluate(&[]);
    assert!(out.status.success(), "{}", stderr(&out));

    // A checkpoint the run would write that is a folder: --resume says so before training.
    let best = run.join(train::rundir::BEST);
    let aside = dir.path().join("best-aside");
    std::fs::rename(&best, &aside).expect("move aside");
    std::fs::create_dir(&best).expect("mkdir");
    let out = train_mnist(&resume);
    let err = stderr(&out);
    assert!(
        !out.status.success()
            && err.contains(&s(&best))
            && err.contains("a directory")
            && err.contains("the run writes best.safetensors there")
            && !err.contains("epoch 2"),
        "{err}"
    );
    std::fs::remove_dir(&best).expect("rmdir");
    std::fs::rename(&aside, &best).expect("put back");
}

/// `--resume` on data of another size than the run trained on is refused, naming both sizes,
/// and on data of the same size with other labels in order; on the same data it goes on.
#[test]
fn resume_on_other_data_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (data, run) = one_epoch_run(dir.path());
    train::synthetic::write_mnist(Path::new(&data), 80, 40).expect("smaller MNIST");
    let resume = ["--resume", &s(&run), "--epochs", "2"];
    let out = train_mnist(&resume);
    let err = stderr(&out);
    assert!(
        !out.status.success()
            && err.contains("the data is not what the run trained on")
            && err.contains("80 training and 40 test images, the run had 96 and 40"),
        "{err}"
    );
    // As many images, but two training labels swapped (other images, or the same in another
    // order): refused too, naming the split.
    train::synthetic::write_mnist(Path::new(&data), 96, 40).expect("the same MNIST");
    let labels = Path::new(&data).join("train-labels-idx1-ubyte");
    let mut bytes = std::fs::read(&labels).expect("labels");
    bytes.swap(8, 9);
    std::fs::write(&labels, &bytes).expect("swapped labels");
    let out = train_mnist(&resume);
    let err = stderr(&out);
    assert!(
        !out.status.success()
            && err.contains("its training images are as many as the run's, but their labels"),
        "{err}"
    );
    // The same labels, one training pixel changed (images edited in place): the epochs left
    // would train on other images than the epochs before; refused.
    train::synthetic::write_mnist(Path::new(&data), 96, 40).expect("the same MNIST");
    let images = Path::new(&data).join("train-images-idx3-ubyte");
    let mut bytes = std::fs::read(&images).expect("images");
    bytes[16 + 5 * 784 + 400] ^= 0x01;
    std::fs::write(&images, &bytes).expect("one pixel changed");
    let out = train_mnist(&resume);
    let err = stderr(&out);
    assert!(
        !out.status.success()
            && err.contains(
                "its training images are as many as the run's, with the same names and labels, \
                 but other contents"
            ),
        "{err}"
    );
    train::synthetic::write_mnist(Path::new(&data), 96, 40).expect("the same MNIST");
    let out = train_mnist(&resume);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Rewrites the state `path` after `edit` (of its tensors and metadata) without its checksums,
/// as the README tells a tool that edits tensors to.
fn rewrite_without_checksums(
    path: &Path,
    edit: impl FnOnce(
        &mut std::collections::HashMap<String, candle_core::Tensor>,
        &mut std::collections::HashMap<String, String>,
    ),
) {
    let (mut tensors, mut metadata) =
        layers::checkpoint::read_with_metadata(path).expect("read the state");
    edit(&mut tensors, &mut metadata);
    metadata
        .retain(|k, _| !k.ends_with("crc32c") && !k.starts_with(layers::checkpoint::CHECKSUM_KEY));
    layers::checkpoint::save_with_metadata(&tensors, Some(metadata), path).expect("rewrite");
}

/// A state rewritten without its checksums (as the README tells a tool that edits tensors to)
/// whose best test accuracy is not its history's best (set to 99.9%): a resume would never
/// replace the best checkpoint again; refused, naming both.
#[test]
fn a_state_whose_best_is_not_its_historys_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_, run) = one_epoch_run(dir.path());
    rewrite_without_checksums(&run.join(train::rundir::STATE), |_, metadata| {
        let mut resume: serde_json::Value =
            serde_json::from_str(&metadata["resume_state"]).expect("resume state");
        resume["best_acc"] = serde_json::json!(99.9);
        metadata.insert("resume_state".into(), resume.to_string());
    });
    let out = train_mnist(&["--resume", &s(&run), "--epochs", "2"]);
    let err = stderr(&out);
    assert!(
        !out.status.success()
            && err.contains(
                "its best epoch 1 at 99.9% test accuracy is not its history's, epoch 1 at"
            ),
        "{err}"
    );
}

/// `best.safetensors` holding other weights than the best epoch's (swapped with another
/// checkpoint, rewritten by another tool) when the best epoch is not the last: `evaluate`,
/// `predict` and `--resume` say so (the state keeps the best weights' checksum); the same
/// weights rewritten without a checksum (as PyTorch's `save_file` writes them) are not flagged.
#[test]
fn a_best_checkpoint_of_other_weights_is_said() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = synthetic(dir.path());
    let run = dir.path().join("run");
    // A learning rate of 0: every epoch tests alike, so the best epoch stays the first.
    let mut args = common_epochs(&data, &run, "2");
    args.extend(["--lr".into(), "0".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let trained = train_mnist(&args);
    assert!(trained.status.success(), "{}", stderr(&trained));
    assert_eq!(train::state::saved_epochs(&run), Some((2, 1)));
    let evaluate = || {
        let out = Command::new(BIN)
            .args(["evaluate", "--run", &s(&run), "--device", "cpu"])
            .output()
            .expect("train-mnist starts");
        assert!(out.status.success(), "{}", stderr(&out));
        stderr(&out)
    };
    let flagged = "holds other weights than the run's best epoch, 1";
    assert!(!evaluate().contains(flagged));
    // The same tensors without the checksum: the same weights.
    let best = run.join(train::rundir::BEST);
    let tensors = layers::checkpoint::read(&best).expect("best");
    safetensors::serialize_to_file(tensors.iter().map(|(k, v)| (k.as_str(), v)), None, &best)
        .expect("rewrite without metadata");
    assert!(!evaluate().contains(flagged));
    // Other weights.
    let mut other = tensors.clone();
    let (name, first) = other
        .iter()
        .find(|(k, _)| k.ends_with(".weight"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .expect("a weight");
    other.insert(name, (first * 0.5).expect("scaled"));
    layers::checkpoint::save_tensors(&other, &best).expect("rewrite");
    let said = evaluate();
    assert!(said.contains(flagged), "{said}");
    let resumed = train_mnist(&["--resume", &s(&run), "--epochs", "3"]);
    let said = stderr(&resumed);
    assert!(
        resumed.status.success()
            && said
                .contains("holds other weights than the best epoch's that the run's state records"),
        "{said}"
    );
}

/// A state rewritten without its checksums (as the README tells a tool that edits tensors to)
/// is still checked against what a run writes before a resume restores it: optimizer buffers
/// removed (Adam's moments would start again from zero), Adam's step counts above the steps
/// taken, weights in float16 (cast silently); each refused, naming the tensor, the run left as
/// it was.
#[test]
fn a_state_rewritten_without_checksums_is_checked_as_a_run_writes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_, run) = one_epoch_run(dir.path());
    let state = run.join(train::rundir::STATE);
    let original = std::fs::read(&state).expect("state");
    type Edit = Box<dyn Fn(&mut std::collections::HashMap<String, candle_core::Tensor>)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|t| t.retain(|k, _| !k.starts_with("optimizer."))),
            "it holds no optimizer buffer",
        ),
        (
            Box::new(|t| {
                for (k, v) in t.iter_mut() {
                    if k.ends_with(".step") {
                        *v = (v.ones_like().expect("ones") * 1000.0).expect("a thousand");
                    }
                }
            }),
            "is 1000, where the run took",
        ),
        (
            Box::new(|t| {
                for (k, v) in t.iter_mut() {
                    if k.starts_with("model.") && v.dtype() == candle_core::DType::F32 {
                        *v = v.to_dtype(candle_core::DType::F16).expect("f16");
                    }
                }
            }),
            "is F16, where a run saves the network's F32",
        ),
    ];
    for (edit, says) in cases {
        std::fs::write(&state, &original).expect("the run's state");
        rewrite_without_checksums(&state, |tensors, _| edit(tensors));
        let rewritten = std::fs::read(&state).expect("state");
        let out = train_mnist(&["--resume", &s(&run), "--epochs", "2"]);
        let err = stderr(&out);
        assert!(!out.status.success() && err.contains(says), "{says}: {err}");
        assert_eq!(std::fs::read(&state).expect("state"), rewritten, "{says}");
    }
    // Rewritten without checksums but otherwise as the run wrote it: resumed.
    std::fs::write(&state, &original).expect("the run's state");
    rewrite_without_checksums(&state, |_, _| {});
    let out = train_mnist(&["--resume", &s(&run), "--epochs", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// `evaluate` and `predict` read a run's settings and class names from `config.json` and
/// `classes.json`, copies of what its state keeps: a copy edited by hand (another label
/// smoothing changes the loss, another class order the names) is refused, naming both files and
/// what differs, as `--resume` refuses it; removed, the state's are read.
#[test]
fn evaluate_refuses_an_edited_config_or_classes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_, run) = one_epoch_run(dir.path());
    let image = dir.path().join("digit.png");
    image::GrayImage::from_pixel(28, 28, image::Luma([200]))
        .save(&image)
        .expect("png");
    let read = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .args(["--run", &s(&run), "--device", "cpu"])
            .output()
            .expect("train-mnist starts")
    };
    let config = run.join(train::rundir::CONFIG);
    let original = std::fs::read(&config).expect("config");
    let mut edited: serde_json::Value = serde_json::from_slice(&original).expect("json");
    edited["label_smoothing"] = serde_json::json!(0.5);
    std::fs::write(&config, serde_json::to_vec(&edited).expect("json")).expect("edit");
    for args in [&["evaluate"][..], &["predict", &s(&image)][..]] {
        let out = read(args);
        let err = stderr(&out);
        assert!(
            !out.status.success()
                && err.contains("config.json and state.safetensors disagree")
                && err.contains("--label-smoothing"),
            "{args:?}: {err}"
        );
    }
    assert!(!run.join("evaluation-best.json").exists());
    std::fs::write(&config, &original).expect("put back");

    let classes = run.join(train::rundir::CLASSES);
    let original = std::fs::read(&classes).expect("classes");
    let mut names: Vec<String> = serde_json::from_slice(&original).expect("json");
    names.swap(0, 1);
    std::fs::write(&classes, serde_json::to_vec(&names).expect("json")).expect("edit");
    for args in [&["evaluate"][..], &["predict", &s(&image)][..]] {
        let out = read(args);
        let err = stderr(&out);
        assert!(
            !out.status.success()
                && err.contains(&format!(
                    "classes.json and state.safetensors disagree (label 0: {:?} in classes.json, \
                     {:?} in the state",
                    names[0], names[1]
                )),
            "{args:?}: {err}"
        );
    }
    // Removed, the state's are read.
    std::fs::remove_file(&classes).expect("remove");
    std::fs::remove_file(&config).expect("remove");
    let out = read(&["evaluate"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// `--resume` continues the run of `state.safetensors`, so the other files of the run must be
/// its own: a state copied from another run, or a `config.json` edited by hand, is refused
/// before anything is written (the resumed run would have replaced the run's checkpoints and
/// configuration with another run's).
#[test]
fn resume_refuses_a_state_or_config_of_another_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (data, run) = one_epoch_run(dir.path());
    // Another run on the same data: the MNIST CNN, not LeNet-5.
    let other = dir.path().join("other");
    let mut args = common(&data, &other);
    let model = args.iter().position(|a| a == "--model").expect("--model") + 1;
    args[model] = "cnn-mnist".into();
    let epochs = args.iter().position(|a| a == "--epochs").expect("--epochs") + 1;
    args[epochs] = "1".into();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert!(train_mnist(&args).status.success());
    let copy = |to: &str| {
        let to = dir.path().join(to);
        std::fs::create_dir(&to).expect("copy dir");
        for file in std::fs::read_dir(&run).expect("list") {
            let file = file.expect("entry").path();
            std::fs::copy(&file, to.join(file.file_name().expect("name"))).expect("copy");
        }
        to
    };
    let bytes = |d: &Path| -> Vec<(String, Vec<u8>)> {
        listing(d)
            .into_iter()
            .map(|f| (f.clone(), std::fs::read(d.join(&f)).expect("read")))
            .collect()
    };
    let refused = |d: &Path, expected: &[&str]| {
        let before = bytes(d);
        let out = train_mnist(&["--resume", &s(d), "--epochs", "2"]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{err}");
        for e in expected {
            assert!(err.contains(e), "{e:?} not in: {err}");
        }
        assert_eq!(bytes(d), before, "a refused resume changed the run");
    };
    // The other run's state beside this run's config.json and checkpoints.
    let foreign = copy("foreign");
    std::fs::copy(
        other.join("state.safetensors"),
        foreign.join("state.safetensors"),
    )
    .expect("copy the state");
    refused(
        &foreign,
        &[
            "config.json and state.safetensors disagree",
            "--model: \"lenet5\" in config.json, \"cnn-mnist\" in state.safetensors",
        ],
    );
    // Without the config.json, the checkpoints tell.
    std::fs::remove_file(foreign.join("config.json")).expect("remove config.json");
    refused(
        &foreign,
        &["best.safetensors and state.safetensors hold different networks"],
    );
    // config.json edited: it changes nothing, and is said.
    let edited = copy("edited");
    let config = std::fs::read_to_string(edited.join("config.json")).expect("config");
    let lr = config
        .lines()
        .find(|l| l.contains("\"lr\""))
        .expect("lr line");
    std::fs::write(
        edited.join("config.json"),
        config.replace(lr, "  \"lr\": 0.5,"),
    )
    .expect("edit");
    refused(
        &edited,
        &["--lr: \"0.5\" in config.json", "editing it changes nothing"],
    );
    // The run itself resumes.
    let out = train_mnist(&["--resume", &s(&run), "--epochs", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The state is the run: checkpoints missing beside it (a kill after the state, before the
/// checkpoints, or a user's `rm`) are written again from it on resume (and by `evaluate` when
/// both are missing); checkpoints without a
/// state are named as such by `--out` and `--resume`; `classes.json` must agree with the
/// class names the state keeps. `evaluate`'s outputs for a checkpoint the run replaces go with
/// it, and only they: files that merely look like them stay.
#[test]
fn the_state_restores_checkpoints_and_stale_evaluations_go() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (data, run) = one_epoch_run(dir.path());
    let evaluate_with = |args: &[&str]| {
        Command::new(BIN)
            .args(["evaluate", "--run", &s(&run)])
            .args(args)
            .args(["--device", "cpu"])
            .output()
            .expect("evaluate runs")
    };
    let evaluate = |args: &[&str]| {
        let out = evaluate_with(args);
        assert!(out.status.success(), "{}", stderr(&out));
    };
    let best = std::fs::read(run.join(train::rundir::BEST)).expect("best");
    let last = std::fs::read(run.join(train::rundir::LAST)).expect("last");
    evaluate(&["--weights", "best"]);
    // `last` evaluated from the run's parent folder, by a relative path: still the run's own,
    // when the run (from here) replaces it.
    let from_parent = Command::new(BIN)
        .current_dir(dir.path())
        .args([
            "evaluate",
            "--run",
            "run",
            "--weights",
            "last",
            "--device",
            "cpu",
        ])
        .output()
        .expect("evaluate runs");
    assert!(from_parent.status.success(), "{}", stderr(&from_parent));
    // Another checkpoint file in the run's folder named like a tag of best's: its own names.
    let copy = run.join("best-bf16.safetensors");
    std::fs::copy(run.join(train::rundir::BEST), &copy).expect("copy best");
    evaluate(&["--weights", &s(&copy)]);
    assert!(
        run.join("evaluation-run-best-bf16.json").is_file(),
        "{:?}",
        listing(&run)
    );
    // A file of the user's that only looks like an evaluation.
    std::fs::write(run.join("evaluation-last-test7.json"), b"mine").expect("theirs");
    let evaluations = || -> Vec<String> {
        listing(&run)
            .into_iter()
            .filter(|f| {
                ["evaluation-", "confusion-", "predictions-"]
                    .iter()
                    .any(|p| f.starts_with(p))
            })
            .collect()
    };
    // Three evaluations of three files each (summary, picture, each image's prediction), and
    // the user's file.
    assert_eq!(evaluations().len(), 10, "{:?}", evaluations());
    // One checkpoint gone: evaluate says so and names the other; but `best` where the last
    // epoch was the best (a process killed between writing `last` and `best` from the state)
    // is written again from the state. Both gone (as a kill after the state and before them
    // leaves the first epoch): evaluate writes them again from the state, as a resume does;
    // removed again, a resume writes them.
    std::fs::remove_file(run.join(train::rundir::LAST)).expect("remove");
    let out = evaluate_with(&["--weights", "last"]);
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("last.safetensors was removed; take --weights best"),
        "{err}"
    );
    std::fs::write(run.join(train::rundir::LAST), &last).expect("put back");
    std::fs::remove_file(run.join(train::rundir::BEST)).expect("remove");
    let out = evaluate_with(&[]);
    let err = stderr(&out);
    assert!(
        out.status.success() && err.contains("best.safetensors was missing: written again"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(run.join(train::rundir::BEST)).expect("best"),
        best
    );
    std::fs::remove_file(run.join(train::rundir::BEST)).expect("remove");
    std::fs::remove_file(run.join(train::rundir::LAST)).expect("remove");
    let out = evaluate_with(&[]);
    let err = stderr(&out);
    assert!(
        out.status.success() && err.contains("was missing: written again from state.safetensors"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(run.join(train::rundir::BEST)).expect("best"),
        best
    );
    for name in [train::rundir::BEST, train::rundir::LAST] {
        std::fs::remove_file(run.join(name)).expect("remove");
    }
    // The same run, unfinished (--epochs 1 would have nothing to train): state, then files.
    let resumed = train_mnist(&["--resume", &s(&run), "--epochs", "2"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let said = String::from_utf8_lossy(&resumed.stdout).into_owned();
    let err = stderr(&resumed);
    for f in [train::rundir::BEST, train::rundir::LAST] {
        assert!(
            err.contains(&format!(
                "{f} was missing: written again from state.safetensors"
            )),
            "{err}"
        );
    }
    assert!(!said.contains("its weights are gone"), "{said}");
    // Epoch 2 replaced last: its evaluations went, named; the others' stay.
    assert!(said.contains("evaluation-last.json"), "{said}");
    let left = evaluations();
    for gone in [
        "evaluation-last.json",
        "confusion-last.png",
        "predictions-last.csv",
    ] {
        assert!(!left.contains(&gone.to_string()), "{gone}: {left:?}");
    }
    for kept in [
        "evaluation-last-test7.json",
        "evaluation-run-best-bf16.json",
        "confusion-run-best-bf16.png",
        "predictions-run-best-bf16.csv",
    ] {
        assert!(left.contains(&kept.to_string()), "{kept}: {left:?}");
    }
    // Best was epoch 1's unless epoch 2 beat it: the restored file was epoch 1's own.
    let best_now = std::fs::read(run.join(train::rundir::BEST)).expect("best");
    let improved = said.contains("evaluation-best.json");
    assert_eq!(best_now == best, !improved, "{said}");
    assert_ne!(
        std::fs::read(run.join(train::rundir::LAST)).expect("last"),
        last
    );

    // classes.json edited: named as the file at fault, nothing changed.
    let classes = run.join(train::rundir::CLASSES);
    let kept = std::fs::read_to_string(&classes).expect("classes.json");
    std::fs::write(&classes, kept.replace("0 - zero", "0 - nil")).expect("edit");
    let refused = train_mnist(&["--resume", &s(&run), "--epochs", "3"]);
    let err = stderr(&refused);
    assert!(
        !refused.status.success() && err.contains("classes.json and state.safetensors disagree"),
        "{err}"
    );
    // Removed: written again from the state.
    std::fs::remove_file(&classes).expect("remove classes.json");
    let resumed = train_mnist(&["--resume", &s(&run), "--epochs", "3"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert_eq!(
        std::fs::read_to_string(&classes).expect("classes.json"),
        kept
    );

    // Checkpoints without a state (a kill by an older version, or files put there): neither a
    // new run nor a resume takes them, and both say why.
    std::fs::remove_file(run.join(train::rundir::STATE)).expect("remove the state");
    let mut args = common(&data, &run);
    let epochs = args.iter().position(|a| a == "--epochs").expect("--epochs") + 1;
    args[epochs] = "1".into();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let fresh = train_mnist(&args);
    let err = stderr(&fresh);
    assert!(
        !fresh.status.success() && err.contains("no state.safetensors, so it cannot be resumed"),
        "{err}"
    );
    let resume = train_mnist(&["--resume", &s(&run)]);
    let err = stderr(&resume);
    assert!(
        !resume.status.success() && err.contains("only checkpoints"),
        "{err}"
    );
}

/// `evaluate` on a run whose `--overwrite` was killed before the new run saved an epoch puts
/// the old run back first and evaluates it, without calling its checkpoint replaced while read
/// (the putting back had happened between the checkpoint's two looks).
#[test]
fn evaluate_after_a_killed_overwrite_reads_the_old_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_, out) = one_epoch_run(dir.path());
    let best = std::fs::read(out.join(train::rundir::BEST)).expect("best");
    // A first epoch of 4,000 steps: killed long before it ends.
    let more = dir.path().join("more");
    train::synthetic::write_mnist(&more, 4000, 40).expect("synthetic MNIST");
    let mut live = Command::new(BIN)
        .args([
            "--data-dir",
            &s(&more),
            "--model",
            "lenet5",
            "--batch-size",
            "1",
        ])
        .args(["--out", &s(&out), "--overwrite", "--device", "cpu"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("train-mnist starts");
    let aside = out.join(train::rundir::REPLACED);
    let waited = Instant::now();
    while !aside.exists() && waited.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = live.kill();
    let _ = live.wait();
    assert!(aside.exists(), "the old run was never set aside");
    let evaluated = Command::new(BIN)
        .args(["evaluate", "--run", &s(&out), "--device", "cpu"])
        .output()
        .expect("evaluate runs");
    assert!(evaluated.status.success(), "{}", stderr(&evaluated));
    assert!(!aside.exists());
    assert_eq!(
        std::fs::read(out.join(train::rundir::BEST)).expect("best"),
        best
    );
    assert!(out.join("evaluation-best.json").is_file());
}

/// A `best.safetensors` damaged since it was saved (cut short) is said on `--resume`, with the
/// epoch whose weights it held: the run cannot write those weights again (only the last
/// epoch's are in its state), and used to go on without a word.
#[test]
fn a_damaged_best_checkpoint_is_said_on_resume() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = synthetic(dir.path());
    let out = dir.path().join("run");
    let mut args = common(&data, &out);
    let epochs = args.iter().position(|a| a == "--epochs").expect("--epochs") + 1;
    args[epochs] = "1".into();
    args.extend(["--lr", "0.05"].map(String::from));
    let first = train_mnist(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(first.status.success(), "{}", stderr(&first));
    // Epochs until the best is no longer the last one.
    let mut done = 1;
    let best_is_earlier = |out: &Path| {
        let (state, _) = train::state::load(out).expect("state");
        state.best_epoch < state.epochs_done
    };
    while !best_is_earlier(&out) {
        done += 1;
        assert!(done <= 40, "every epoch was the best so far");
        let more = train_mnist(&["--resume", &s(&out), "--epochs", &done.to_string()]);
        assert!(more.status.success(), "{}", stderr(&more));
    }
    let best = out.join(train::rundir::BEST);
    let bytes = std::fs::read(&best).expect("best");
    // Cut inside its header (100 bytes; MNIST's headers are about 800), then after it.
    for (cut, epochs) in [(100, done + 1), (1000, done + 2)] {
        std::fs::write(&best, &bytes[..cut]).expect("cut best short");
        let resumed = train_mnist(&["--resume", &s(&out), "--epochs", &epochs.to_string()]);
        assert!(resumed.status.success(), "{cut}: {}", stderr(&resumed));
        let err = stderr(&resumed);
        assert!(
            err.contains("best.safetensors cannot be read")
                && err.contains("held the weights of epoch"),
            "{cut}: {err}"
        );
    }
}

/// A `--limit-train` / `--limit-test` subset too small to hold every class says which classes
/// it leaves out, and what that means, as a warning.
#[test]
fn a_subset_without_some_classes_says_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = synthetic(dir.path());
    let out = dir.path().join("run");
    let mut args = common_epochs(&data, &out, "1");
    args.extend(["--limit-train", "4", "--limit-test", "30"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = train_mnist(&args);
    let err = stderr(&run);
    assert!(run.status.success(), "{err}");
    assert!(
        err.contains("--limit-train 4: the train subset has no image of 6 of the 10 classes")
            && err.contains("the model never trains on them"),
        "{err}"
    );
    assert!(!err.contains("--limit-test 30:"), "{err}");
}
