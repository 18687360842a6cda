//! Work done off the shards comes back through a queue of the service's own: a thread keeps
//! the shard's `Nudger` (from `Ctx::nudger`), pushes results, nudges; the service drains the
//! queue in `on_nudge` on its shard — every result arrives, each on the shard it belongs to,
//! whether the shard was busy or asleep.

use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use valkyrie_runtime::{Ctx, Node, Service};

/// Each shard's service starts a worker thread that hands it 200 results, nudging after each.
struct Offloaded {
    results: Option<Receiver<u32>>,
    seen: Sender<(usize, u32)>,
}

impl Service for Offloaded {
    fn on_start(&mut self, ctx: &mut Ctx<'_>) {
        let nudger = ctx.nudger();
        assert_eq!(nudger.shard(), ctx.shard());
        let (tx, rx) = crossbeam_channel::bounded(16);
        self.results = Some(rx);
        std::thread::spawn(move || {
            for i in 0..200 {
                if tx.send(i).is_err() {
                    return;
                }
                nudger.nudge();
                // Now and then long enough for the shard to fall asleep.
                if i % 20 == 0 {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
    }

    fn on_frame(
        &mut self,
        _ctx: &mut Ctx<'_>,
        _conn: valkyrie_runtime::ConnRef,
        _frame: valkyrie_protocol::Frame,
    ) {
    }

    fn on_nudge(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(rx) = &self.results {
            while let Ok(i) = rx.try_recv() {
                let _ = self.seen.send((ctx.shard(), i));
            }
        }
    }
}

#[test]
fn results_from_other_threads_reach_their_shard_through_its_nudger() {
    let (seen, got) = crossbeam_channel::unbounded();
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .shards(2)
        .service(move |_| Offloaded {
            results: None,
            seen: seen.clone(),
        })
        .start()
        .unwrap();
    let mut per_shard = [Vec::new(), Vec::new()];
    while per_shard.iter().map(Vec::len).sum::<usize>() < 400 {
        let (shard, i) = got
            .recv_timeout(Duration::from_secs(10))
            .expect("every result arrives");
        per_shard[shard].push(i);
    }
    for results in per_shard {
        assert_eq!(results, (0..200).collect::<Vec<_>>(), "all, in order");
    }
    node.shutdown();
    node.join();
}
