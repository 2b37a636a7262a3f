//! The catalog: a data set registered from a spec loads by name, with its own classes, and is
//! checked like the built-in ones.

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use datasets::catalog::{self, DatasetSpec};
use datasets::{InMemory, Split};

const LETTERS: [&str; 3] = ["a", "b", "c"];

/// `train.bin` and `test.bin`: a byte of label, then 4x4 grey pixels, per image.
fn read_letters(dir: &Path) -> Result<Split> {
    let part = |name: &str| -> Result<InMemory> {
        let bytes = std::fs::read(dir.join(name))?;
        let (labels, pixels): (Vec<usize>, Vec<u8>) = (
            bytes.chunks(17).map(|r| r[0] as usize).collect(),
            bytes.chunks(17).flat_map(|r| r[1..].to_vec()).collect(),
        );
        let classes = LETTERS.map(String::from).to_vec();
        InMemory::new(pixels, labels, (1, 4, 4), classes)
    };
    let split = Split {
        train: Arc::new(part("train.bin")?),
        test: Arc::new(part("test.bin")?),
    };
    split.check("train.bin", "test.bin")?;
    Ok(split)
}

#[test]
fn a_data_set_registered_from_a_spec_loads_by_name() -> Result<()> {
    catalog::register(DatasetSpec {
        name: "letters",
        title: "Letters",
        classes: &LETTERS,
        shape: Some((1, 4, 4)),
        hub: None,
        local_files: "train.bin and test.bin",
        sizes: None,
        read: Some(catalog::Reader::split(read_letters)),
        ..catalog::MNIST
    })?;
    assert!(catalog::register(catalog::MNIST).is_err());
    let dir = tempfile::tempdir()?;
    let record = |label: u8| [vec![label], vec![label * 80; 16]].concat();
    std::fs::write(
        dir.path().join("train.bin"),
        [record(0), record(1), record(2)].concat(),
    )?;
    std::fs::write(dir.path().join("test.bin"), [record(2), record(0)].concat())?;

    let spec = catalog::spec("letters")?;
    let split = catalog::load(spec, Some(dir.path()))?;
    assert_eq!(split.train.len(), 3);
    assert_eq!(split.test.classes(), LETTERS);
    assert_eq!(split.test.label(0), 2);
    // Without a test reader of its own, the test split alone is the whole split's test half.
    let test = catalog::load_test(spec, Some(dir.path()))?;
    assert_eq!((test.len(), test.label(0)), (2, 2));
    let missing = catalog::load(spec, None).unwrap_err().to_string();
    assert!(
        missing.contains("Letters needs --data-dir with train.bin and test.bin"),
        "{missing}"
    );
    std::fs::write(dir.path().join("test.bin"), [])?;
    assert!(catalog::load(spec, Some(dir.path())).is_err());
    Ok(())
}

#[test]
fn built_in_names_and_kinds_agree() -> Result<()> {
    for kind in [
        datasets::DatasetKind::Mnist,
        datasets::DatasetKind::Cifar10,
        datasets::DatasetKind::Folder,
    ] {
        assert_eq!(catalog::spec(kind.spec().name)?.title, kind.spec().title);
    }
    let imagenet = catalog::spec("imagenet")?;
    assert!(catalog::load(imagenet, Some(Path::new("."))).is_err());
    Ok(())
}
