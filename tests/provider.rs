//! A provider's outbox: post_manager on PostgreSQL (a real cluster started
//! by the test), several stateless instances sharing it.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use common::pg::Postgres;
use post_manager::store::{contract, Store};

/// The store's whole contract, on PostgreSQL: each part on a fresh database.
#[test]
fn the_postgres_backend_keeps_the_stores_contract() {
    let pg = Postgres::start();
    let n = AtomicUsize::new(0);
    contract::all(&mut || {
        let url = pg.create_db(&format!("contract{}", n.fetch_add(1, Ordering::Relaxed)));
        Store::open_spec(&url).unwrap()
    });
}
