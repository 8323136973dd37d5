//! A TCP gate between a client and a server on 127.0.0.1. Open, it passes bytes both ways; shut,
//! it resets every connection, the open ones and each new one, as when the server's pod is gone
//! from behind its Service.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Gate {
    addr: SocketAddr,
    shut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    /// An open gate to `target`, on a free port.
    pub async fn to(target: SocketAddr) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shut = watch::channel(false).0;
        let shut_seen = shut.subscribe();
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                let mut shut_seen = shut_seen.clone();
                if *shut_seen.borrow_and_update() {
                    reset(inbound);
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        reset(inbound);
                        return;
                    };
                    let mut inbound = inbound;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = shut_seen.wait_for(|shut| *shut) => reset(inbound),
                    }
                });
            }
        });
        Gate { addr, shut, task }
    }

    /// The URL of the server, through the gate.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Resets every connection from now on, and the open ones.
    pub fn shut(&self) {
        self.shut.send_replace(true);
    }

    pub fn open(&self) {
        self.shut.send_replace(false);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Closes `stream` with a reset, not an orderly end.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}
