//! Session workers: one OS thread per core, each driving its own single-threaded tokio
//! runtime, the way pgbouncer runs one event loop. A session lives its whole life on the
//! worker that accepted it: its two sockets, its timers and its task are on one thread, so a
//! wake-up never crosses threads (no work stealing, no futex to unpark a sibling worker), which
//! is most of what a multi-threaded scheduler costs a proxy that does little work per message.
//! The accept loop, the admin API and background jobs stay on the main runtime.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

/// Stack of a worker thread: deep inspections recurse (pg_query trees, PL/pgSQL bodies).
const STACK_SIZE: usize = 8 << 20;

struct Worker {
    handle: tokio::runtime::Handle,
    /// Sessions running on this worker now.
    load: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The running workers; dropping it stops them (after their sessions are gone). With no
/// workers, sessions are spawned on the runtime that calls [`Workers::spawn`].
pub struct Workers {
    workers: Vec<Worker>,
}

/// How many workers a machine gets: one per core the process may use.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Workers {
    /// Starts `n` workers (none: sessions stay on the caller's runtime).
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let mut workers = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_stack_size(STACK_SIZE)
                .build()?;
            let handle = rt.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("pgwarden-worker-{i}"))
                .stack_size(STACK_SIZE)
                .spawn(move || {
                    // Sessions are spawned onto this runtime from the accept loop; they run
                    // while the thread drives it, until told to stop.
                    rt.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
            workers.push(Worker {
                handle,
                load: Arc::default(),
                stop: Some(stop),
                thread: Some(thread),
            });
        }
        Ok(Workers { workers })
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Runs the future `make` builds on the least loaded worker. `make` runs on that worker,
    /// so sockets it registers (`TcpStream::from_std`) belong to that worker's event loop.
    pub fn spawn<M, F>(&self, make: M)
    where
        M: FnOnce() -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let Some(w) = self
            .workers
            .iter()
            .min_by_key(|w| w.load.load(Ordering::Relaxed))
        else {
            tokio::spawn(async move { make().await });
            return;
        };
        let load = w.load.clone();
        load.fetch_add(1, Ordering::Relaxed);
        w.handle.spawn(async move {
            let _done = LoadGuard(load);
            make().await;
        });
    }

    /// Sessions running on each worker now (for tests and diagnostics).
    pub fn loads(&self) -> Vec<usize> {
        self.workers
            .iter()
            .map(|w| w.load.load(Ordering::Relaxed))
            .collect()
    }
}

struct LoadGuard(Arc<AtomicUsize>);

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &mut self.workers {
            if let Some(stop) = w.stop.take() {
                let _ = stop.send(());
            }
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                // A worker ends once its runtime is dropped (tasks still there are cancelled).
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_spread_over_workers_and_run_on_their_thread() {
        let workers = Workers::start(2).unwrap();
        assert_eq!(workers.len(), 2);
        let (tx, rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        for _ in 0..4 {
            let tx = tx.clone();
            let mut release = release_rx.clone();
            workers.spawn(move || async move {
                let name = std::thread::current().name().map(str::to_owned);
                tx.send(name).unwrap();
                let _ = release.wait_for(|r| *r).await;
            });
        }
        let names: Vec<_> = (0..4).map(|_| rx.recv().unwrap().unwrap()).collect();
        assert!(names.iter().all(|n| n.starts_with("pgwarden-worker-")));
        assert_eq!(workers.loads(), vec![2, 2], "least loaded first: {names:?}");
        release_tx.send(true).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while workers.loads() != vec![0, 0] {
            assert!(std::time::Instant::now() < deadline, "sessions did not end");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
