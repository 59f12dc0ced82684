//! One layer for every stage that needs the [`App`]: the stage is named by a
//! marker type, and each stage implements `Service` for `AppStage<Marker, S>`.
//! Cloning a stage is one `Arc` increment (each connection copies the stack,
//! and the async stages clone the stage below them per call).

use std::marker::PhantomData;
use std::sync::Arc;

use tower::Layer;

use crate::app::App;

#[derive(Debug, Clone)]
pub(crate) struct AppLayer<K> {
    app: Arc<App>,
    kind: PhantomData<K>,
}

impl<K> AppLayer<K> {
    pub(crate) fn new(app: Arc<App>) -> Self {
        Self {
            app,
            kind: PhantomData,
        }
    }
}

impl<K, S> Layer<S> for AppLayer<K> {
    type Service = AppStage<K, S>;
    fn layer(&self, inner: S) -> AppStage<K, S> {
        AppStage {
            app: self.app.clone(),
            inner,
            kind: PhantomData,
        }
    }
}

/// A stage `K` around the inner service `S`.
#[derive(Debug)]
pub(crate) struct AppStage<K, S> {
    pub(super) app: Arc<App>,
    pub(super) inner: S,
    kind: PhantomData<K>,
}

impl<K, S: Clone> Clone for AppStage<K, S> {
    fn clone(&self) -> Self {
        Self {
            app: self.app.clone(),
            inner: self.inner.clone(),
            kind: PhantomData,
        }
    }
}
