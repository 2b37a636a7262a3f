//! With `HF_HUB_OFFLINE=1` and an empty cache, the Hub loaders fail with a clear message.
//! One test per file: it sets process-wide environment variables.

#[test]
fn offline_and_not_cached_says_to_pass_data_dir() {
    let home = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HOME", home.path());
    std::env::remove_var("HF_HUB_CACHE");
    std::env::set_var("HF_HUB_OFFLINE", "1");
    for (name, result) in [
        ("MNIST", datasets::mnist(None)),
        ("CIFAR-10", datasets::cifar10(None)),
    ] {
        let msg = format!("{:#}", result.unwrap_err());
        assert!(
            msg.contains(name) && msg.contains("--data-dir") && msg.contains("HF_HUB_OFFLINE"),
            "{msg}"
        );
        assert!(
            msg.contains(&home.path().display().to_string()),
            "names the cache: {msg}"
        );
    }
    // The test split alone (evaluate's) asks for the test file only.
    for spec in [&datasets::catalog::MNIST, &datasets::catalog::CIFAR10] {
        let whole = format!("{:#}", datasets::catalog::load(spec, None).unwrap_err());
        assert!(whole.contains("/train/0000.parquet"), "{whole}");
        let test = datasets::catalog::load_test(spec, None)
            .err()
            .expect("not cached");
        let msg = format!("{test:#}");
        assert!(
            msg.contains("/test/0000.parquet")
                && !msg.contains("/train/")
                && msg.contains("HF_HUB_OFFLINE"),
            "{msg}"
        );
    }
    let msg = format!(
        "{:#}",
        datasets::hub::fetch_model_file(
            "timm/resnet50.tv_in1k",
            "model.safetensors",
            "--weights FILE"
        )
        .unwrap_err()
    );
    assert!(
        msg.contains("timm/resnet50.tv_in1k")
            && msg.contains("--weights FILE")
            && msg.contains("HF_HUB_OFFLINE"),
        "{msg}"
    );
    // A Hub id given for a flag: the message says how to make the file instead.
    let msg = format!(
        "{:#}",
        datasets::hub::file_or_hub(
            "timm/resnet18.tv_in1k",
            "model.safetensors",
            "--weights",
            "timm/resnet18.tv_in1k"
        )
        .unwrap_err()
    );
    assert!(
        msg.contains("--weights FILE.safetensors (made once where PyTorch is installed")
            && msg.contains("save_file")
            && msg.contains("HF_HUB_OFFLINE"),
        "{msg}"
    );
    // CIFAR-10's hint names the archives too.
    let msg = format!("{:#}", datasets::cifar10(None).unwrap_err());
    assert!(msg.contains("*cifar*.tar.gz archive"), "{msg}");
}
