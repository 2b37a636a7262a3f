//! Every run writes a TensorBoard event file whose records all pass their checksums and whose
//! scalars are the numbers of `metrics.csv`; a resumed run adds a file.

use anyhow::Result;
use train::cli::load_data;
use train::config::{DatasetKind, RunConfig};
use train::tensorboard::{read_events, Event};

fn event_files(dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .map(|e| Ok(e?.path()))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                n.to_string_lossy()
                    .starts_with(train::rundir::EVENTS_PREFIX)
            })
        })
        .collect();
    files.sort();
    Ok(files)
}

/// `(tag, step, value)` of every scalar.
fn scalars(events: &[Event]) -> Vec<(String, i64, f32)> {
    events
        .iter()
        .flat_map(|e| {
            e.summary.iter().flat_map(move |s| {
                s.value
                    .iter()
                    .filter_map(move |v| v.simple_value.map(|x| (v.tag.clone(), e.step, x)))
            })
        })
        .collect()
}

#[test]
fn scalars_and_images_match_the_run() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("mnist");
    train::synthetic::write_mnist(&data, 96, 20)?;
    let out = dir.path().join("run");
    let config = RunConfig {
        data_dir: Some(data),
        batch_size: 8,
        epochs: 2,
        ..RunConfig::new("test", DatasetKind::Mnist, "lenet5")
    };
    train::run::run(&config, load_data(&config)?, &out, None)?;
    let files = event_files(&out)?;
    assert_eq!(files.len(), 1);
    let events = read_events(&files[0])?;
    assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
    let scalars = scalars(&events);

    let csv = std::fs::read_to_string(out.join(train::rundir::METRICS_CSV))?;
    let header: Vec<&str> = csv.lines().next().unwrap_or_default().split(',').collect();
    for row in csv.lines().skip(1) {
        let fields: Vec<f64> = row.split(',').map(str::parse).collect::<Result<_, _>>()?;
        let epoch = fields[0] as i64;
        for (column, tag) in [
            ("train_loss", "train/loss"),
            ("train_acc", "train/acc"),
            ("test_loss", "test/loss"),
            ("test_acc", "test/acc"),
            ("test_top5", "test/top5"),
            ("lr", "lr"),
        ] {
            let expected = fields[header.iter().position(|h| *h == column).expect(column)];
            let logged = scalars
                .iter()
                .find(|(t, s, _)| t == tag && *s == epoch)
                .map(|(_, _, v)| f64::from(*v))
                .unwrap_or_else(|| panic!("{tag} at epoch {epoch} missing"));
            assert!(
                (logged - expected).abs() <= 1e-5 * expected.abs().max(1e-3),
                "{tag} epoch {epoch}: {logged} vs {expected}"
            );
        }
    }
    // 12 batches an epoch: the training loss at steps 10 and 20.
    let steps: Vec<i64> = scalars
        .iter()
        .filter(|(t, _, _)| t == "train/batch_loss")
        .map(|(_, s, _)| *s)
        .collect();
    assert_eq!(steps, [10, 20]);
    let images: Vec<(String, i64)> = events
        .iter()
        .flat_map(|e| {
            e.summary.iter().flat_map(move |s| {
                s.value
                    .iter()
                    .filter(|v| v.image.is_some())
                    .map(move |v| (v.tag.clone(), e.step))
            })
        })
        .collect();
    assert_eq!(
        images,
        [
            ("predictions".to_string(), 1),
            ("confusion".to_string(), 1),
            ("predictions".to_string(), 2),
            ("confusion".to_string(), 2)
        ]
    );

    let (saved, tensors) = train::state::load(&out)?;
    let more = RunConfig {
        epochs: 3,
        ..config
    };
    train::run::run(&more, load_data(&more)?, &out, Some((saved, tensors)))?;
    std::thread::sleep(std::time::Duration::from_millis(10));
    let files = event_files(&out)?;
    assert_eq!(files.len(), 2, "{files:?}");
    Ok(())
}
