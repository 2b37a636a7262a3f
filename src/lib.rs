//! The classic CNN families on Candle, in one import: every crate of the workspace.
pub use alexnet;
pub use datasets;
pub use googlenet;
pub use layers;
pub use lenet;
pub use mnist_cnn;
pub use resnet;
pub use train;
pub use vgg;
pub use viz;
pub use zoo;
