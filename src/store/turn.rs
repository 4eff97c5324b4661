//! Which writer lane waits for the next commands.
//!
//! One lane at a time holds the turn: it waits in the channel's `recv`,
//! commits what came and lets the turn go before it syncs; when its sync
//! returns it takes the turn back if it is free. The other lanes park, and
//! are called in only when a command arrives while nobody holds the turn
//! (its holder is syncing) or is already waiting when the turn is let go.
//! So with one event at a time only the lane that receives it is ever
//! woken. Handing the connection over after every commit instead woke the
//! other lane each time, before the sync, and cost a lone event ~40-90 µs
//! (docs/benchmarks.md, "Re-measured 2026-12-05, night").
//!
//! No command is left without a lane: `sent` and `release` each check the
//! other's flag after setting their own (all `SeqCst`), so at least one of
//! them sees the command and the free turn and calls a parked lane in; a
//! lane that is syncing comes back for the turn by itself.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Condvar, Mutex, PoisonError};

#[derive(Debug, Default)]
pub(super) struct Turn {
    taken: AtomicBool,
    /// Commands sent and not yet received. Counted before the send, so it
    /// may run ahead of the channel, never behind it.
    queued: AtomicUsize,
    stopping: AtomicBool,
    park: Mutex<()>,
    parked: Condvar,
}

impl Turn {
    /// A producer is about to send a command.
    pub fn sending(&self) {
        self.queued.fetch_add(1, SeqCst);
    }

    /// A producer sent a command: if no lane holds the turn, call one in.
    pub fn sent(&self) {
        if !self.taken.load(SeqCst) {
            self.call_one();
        }
    }

    /// The lane holding the turn took `n` commands from the channel.
    pub fn received(&self, n: usize) {
        self.queued.fetch_sub(n, SeqCst);
    }

    /// Takes the turn if it is free, without waiting.
    pub fn try_take(&self) -> bool {
        !self.taken.swap(true, SeqCst)
    }

    /// Parks until the turn is free and takes it; `false` once stopping.
    pub fn take(&self) -> bool {
        let mut guard = self.park.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if self.stopping.load(SeqCst) {
                return false;
            }
            if self.try_take() {
                return true;
            }
            guard = self.parked.wait(guard).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Lets the turn go; calls a parked lane in if commands already wait.
    pub fn release(&self) {
        self.taken.store(false, SeqCst);
        if self.queued.load(SeqCst) > 0 {
            self.call_one();
        }
    }

    /// Every parked lane wakes and stops; lanes still syncing stop after it.
    pub fn stop(&self) {
        self.stopping.store(true, SeqCst);
        let _guard = self.park.lock().unwrap_or_else(PoisonError::into_inner);
        self.parked.notify_all();
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(SeqCst)
    }

    fn call_one(&self) {
        // Under the lock a parking lane checks the turn with, so the call
        // cannot fall between its check and its wait.
        let _guard = self.park.lock().unwrap_or_else(PoisonError::into_inner);
        self.parked.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::mpsc::channel;

    #[test]
    fn one_holder_at_a_time_and_stop_wakes_the_parked() {
        let turn = Arc::new(Turn::default());
        assert!(turn.try_take());
        assert!(!turn.try_take());
        turn.release();
        assert!(turn.try_take(), "a freed turn can be taken");
        let (taken, lane) = parked_lane(&turn);
        turn.stop();
        assert_eq!(taken.recv_timeout(CALLED_IN), Ok(false), "stopping, not taken");
        lane.join().unwrap();
        assert!(turn.stopping());
    }

    /// A lane parked on the turn, reporting on `taken` once it holds it.
    fn parked_lane(turn: &Arc<Turn>) -> (std::sync::mpsc::Receiver<bool>, std::thread::JoinHandle<()>) {
        let (tx, rx) = channel();
        let t = turn.clone();
        let h = std::thread::spawn(move || {
            let _ = tx.send(t.take());
        });
        // Long enough for the thread to reach its wait; if it were slower
        // it would find the turn free by itself and the test could not fail.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(std::time::Duration::from_millis(100));
        (rx, h)
    }

    const CALLED_IN: std::time::Duration = std::time::Duration::from_secs(10);

    /// The holder is syncing (turn let go, nothing queued); a command sent
    /// now must call the parked lane in, not wait for the sync to end.
    #[test]
    fn a_command_sent_while_nobody_holds_the_turn_calls_a_lane_in() {
        let turn = Arc::new(Turn::default());
        assert!(turn.try_take());
        let (taken, lane) = parked_lane(&turn);
        turn.release();
        assert!(taken.try_recv().is_err(), "nothing queued: nobody is called in");
        turn.sending();
        turn.sent();
        assert_eq!(taken.recv_timeout(CALLED_IN), Ok(true));
        lane.join().unwrap();
    }

    /// A command sent while the holder still held the turn, but after it
    /// stopped receiving, must call the parked lane in when the turn is let
    /// go.
    #[test]
    fn letting_the_turn_go_with_commands_waiting_calls_a_lane_in() {
        let turn = Arc::new(Turn::default());
        assert!(turn.try_take());
        let (taken, lane) = parked_lane(&turn);
        turn.sending();
        turn.sent();
        assert!(taken.try_recv().is_err(), "the turn is held: nobody is called in");
        turn.release();
        assert_eq!(taken.recv_timeout(CALLED_IN), Ok(true));
        lane.join().unwrap();
    }

    /// Lanes built on the turn the way `writer.rs` uses it, with producers
    /// sending one command at a time and waiting for it to be handled:
    /// every command is handled, by one turn holder at a time.
    #[test]
    fn no_command_is_left_without_a_lane() {
        const LANES: usize = 3;
        const PRODUCERS: usize = 3;
        const EACH: usize = 3_000;
        let turn = Arc::new(Turn::default());
        let (tx, rx) = channel::<std::sync::mpsc::Sender<()>>();
        let rx = Arc::new(Mutex::new(rx));
        let holders = Arc::new(AtomicUsize::new(0));
        let lanes: Vec<_> = (0..LANES)
            .map(|_| {
                let (turn, rx, holders) = (turn.clone(), rx.clone(), holders.clone());
                std::thread::spawn(move || {
                    if !turn.take() {
                        return;
                    }
                    loop {
                        assert_eq!(holders.fetch_add(1, SeqCst), 0, "two lanes hold the turn");
                        let done = rx.lock().unwrap().recv();
                        holders.fetch_sub(1, SeqCst);
                        let Ok(done) = done else {
                            turn.stop();
                            return;
                        };
                        turn.received(1);
                        turn.release();
                        // The "sync": the producer hears back only now.
                        let _ = done.send(());
                        if !turn.try_take() && !turn.take() {
                            return;
                        }
                    }
                })
            })
            .collect();
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|_| {
                let (turn, tx) = (turn.clone(), tx.clone());
                std::thread::spawn(move || {
                    for _ in 0..EACH {
                        let (done_tx, done_rx) = channel();
                        turn.sending();
                        tx.send(done_tx).unwrap();
                        turn.sent();
                        done_rx.recv_timeout(std::time::Duration::from_secs(10)).expect("a lane handled it");
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        drop(tx);
        for l in lanes {
            l.join().unwrap();
        }
    }
}
