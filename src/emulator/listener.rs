//! The accept loop: serves connections, and during an outage closes the listener (new
//! connections refused, open ones dropped), then binds the same address again.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::api;
use super::org::Listening;

/// The accept loop and its outages.
pub(crate) struct Server {
    /// The whole HTTP API.
    pub(crate) app: Router,
    /// The address to bind again after an outage.
    pub(crate) addr: SocketAddr,
    /// Stops serving for good.
    pub(crate) stop: CancellationToken,
    /// Outages start and end here.
    pub(crate) control: watch::Receiver<Listening>,
    /// Whether the listener is open now.
    pub(crate) bound: watch::Sender<bool>,
}

fn serving(state: Listening) -> bool {
    match state {
        Listening::Serving => true,
        Listening::Stopped(Some(until)) => until <= Instant::now(),
        Listening::Stopped(None) => false,
    }
}

impl Server {
    /// Serves; during an outage the listener is closed and open connections are dropped, then
    /// the same address is bound again.
    pub(crate) async fn serve(mut self, mut listener: TcpListener) {
        loop {
            let generation = self.stop.child_token();
            let outage = self.accept(&listener, &generation).await;
            generation.cancel();
            drop(listener);
            self.bound.send_replace(false);
            if !outage || !self.wait_until_serving().await {
                return;
            }
            listener = match self.bind_again().await {
                Some(listener) => listener,
                None => return,
            };
            self.bound.send_replace(true);
        }
    }

    /// Accepts until an outage starts (true) or the emulator stops (false).
    async fn accept(&mut self, listener: &TcpListener, generation: &CancellationToken) -> bool {
        loop {
            if !serving(*self.control.borrow_and_update()) {
                return true;
            }
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
                changed = self.control.changed() => match changed {
                    Ok(()) => continue,
                    Err(_) => return false,
                },
                _ = self.stop.cancelled() => return false,
            };
            serve_connection(stream, self.app.clone(), generation.clone());
        }
    }

    /// Waits out an outage; false when the emulator stops meanwhile.
    async fn wait_until_serving(&mut self) -> bool {
        loop {
            let state = *self.control.borrow_and_update();
            if serving(state) {
                return true;
            }
            let until = match state {
                Listening::Stopped(Some(until)) => tokio::time::Instant::from_std(until),
                _ => tokio::time::Instant::now() + Duration::from_secs(86_400),
            };
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {}
                changed = self.control.changed() => if changed.is_err() { return false },
                _ = self.stop.cancelled() => return false,
            }
        }
    }

    /// Binds the address again (its port may linger briefly after the close).
    async fn bind_again(&self) -> Option<TcpListener> {
        for _ in 0..200 {
            if let Ok(listener) = TcpListener::bind(self.addr).await {
                return Some(listener);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(25)) => {}
                _ = self.stop.cancelled() => return None,
            }
        }
        None
    }
}

/// Serves one connection; a request that draws a reset fault drops it unanswered.
fn serve_connection(stream: tokio::net::TcpStream, app: Router, stop: CancellationToken) {
    let _ = stream.set_nodelay(true);
    tokio::spawn(async move {
        let kill = CancellationToken::new();
        let marker = api::ConnectionKill(kill.clone());
        let service = hyper::service::service_fn(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(marker.clone());
                app.clone().oneshot(request.map(axum::body::Body::new))
            },
        );
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::select! {
            _ = connection => {}
            _ = kill.cancelled() => {}
            _ = stop.cancelled() => {}
        }
    });
}
