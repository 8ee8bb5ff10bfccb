//! A TCP proxy on loopback standing in for the network in front of Postgres. It forwards to one
//! backend port at a time and can
//! - move to another ([`Proxy::switch`]), as a virtual IP after a failover: the open
//!   connections are cut, new ones reach the new backend;
//! - blackhole ([`Proxy::blackhole`]): nothing passes either way, nothing is reset or closed,
//!   new connections get no answer. [`Proxy::restore`] delivers what was held, a close
//!   included, as TCP retransmits once a partition heals.
//!
//! Every task ends when the proxy is dropped (or after [`CONNECTION_LIFETIME`]).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Where connections go, and whether anything passes.
#[derive(Debug, Clone, Copy)]
struct Route {
    target: u16,
    /// Bumped by a switch: connections of an older generation are cut.
    generation: u64,
    blackholed: bool,
}

/// The longest a proxied connection lives.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(600);

/// A proxy on 127.0.0.1.
pub struct Proxy {
    /// Its port.
    pub port: u16,
    route: watch::Sender<Route>,
}

impl Proxy {
    /// Listens on `port`, forwarding to 127.0.0.1:`target`.
    pub async fn start(port: u16, target: u16) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("the proxy's port {port}: {e}"));
        let (route, watching) = watch::channel(Route {
            target,
            generation: 0,
            blackholed: false,
        });
        let mut gone = watching.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        if let Ok((client, _)) = accepted {
                            tokio::spawn(forward(client, watching.clone()));
                        }
                    }
                    changed = gone.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Proxy { port, route }
    }

    /// `postgres://postgres@127.0.0.1:PORT/database`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Cuts every open connection; new ones go to 127.0.0.1:`target`.
    pub fn switch(&self, target: u16) {
        self.route.send_modify(|route| {
            route.target = target;
            route.generation += 1;
        });
    }

    /// From now on nothing passes, on open connections and new ones, until [`Proxy::restore`].
    pub fn blackhole(&self) {
        self.route.send_modify(|route| route.blackholed = true);
    }

    /// Lets traffic pass again, what was held first.
    pub fn restore(&self) {
        self.route.send_modify(|route| route.blackholed = false);
    }
}

/// Waits while the proxy blackholes; the route then, `None` once the proxy is gone.
async fn passable(route: &mut watch::Receiver<Route>) -> Option<Route> {
    route.wait_for(|r| !r.blackholed).await.ok().map(|r| *r)
}

async fn forward(client: TcpStream, mut route: watch::Receiver<Route>) {
    let _ = tokio::time::timeout(CONNECTION_LIFETIME, async move {
        // A connection opened during a blackhole waits, unanswered, as a dropped SYN would.
        let Some(at) = passable(&mut route).await else {
            return;
        };
        let Ok(server) = TcpStream::connect(("127.0.0.1", at.target)).await else {
            return;
        };
        let _ = (client.set_nodelay(true), server.set_nodelay(true));
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        let up = pipe(client_read, server_write, route.clone());
        let down = pipe(server_read, client_write, route.clone());
        let moved = async move {
            loop {
                if route.changed().await.is_err() || route.borrow().generation != at.generation {
                    return;
                }
            }
        };
        tokio::select! {
            _ = async { tokio::join!(up, down) } => {}
            _ = moved => {}
        }
    })
    .await;
}

/// Copies `from` to `to`; what arrives during a blackhole (an end of stream too) is held until
/// it lifts, and the kernel's buffers hold the rest.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut route: watch::Receiver<Route>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await.unwrap_or(0);
        if passable(&mut route).await.is_none() {
            return;
        }
        if n == 0 {
            let _ = to.shutdown().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
