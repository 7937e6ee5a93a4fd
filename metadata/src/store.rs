//! The key-value store under the metadata service.
//!
//! The service needs little from its store: point reads, ordered prefix
//! scans, and atomic batches that are durable when `write` returns. That is
//! [`KvStore`]; [`RocksStore`] implements it on RocksDB with one column
//! family per [`Table`]. A distributed engine (etcd, TiKV) can implement the
//! same trait later without the service changing.
//!
//! Crash rule: a batch is either wholly in the store after a crash or not at
//! all (RocksDB's WAL with `sync = true`), and `write` returns only after
//! the WAL is on stable storage.

#[cfg(feature = "rocksdb")]
pub use rocks::RocksStore;

use std::collections::{BTreeMap, HashMap};

use parking_lot::Mutex;

use crate::error::MetaResult;

/// The tables of the metadata store (RocksDB column families).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// Counters and format version.
    Meta,
    Pvs,
    Vgs,
    Lvs,
    /// (lv id, logical extent) -> extent entry.
    Extents,
    /// (pv id, pe) -> lv id: extents handed to a lease holder, not yet mapped.
    Reservations,
    /// (lv id, logical extent, chunk) -> block checksums.
    Checksums,
    /// lv id -> holder: LVs under a lease that was never released. A key
    /// found at the next grant means the holder stopped uncleanly.
    Open,
}

impl Table {
    pub const ALL: [Table; 8] = [
        Table::Meta,
        Table::Pvs,
        Table::Vgs,
        Table::Lvs,
        Table::Extents,
        Table::Reservations,
        Table::Checksums,
        Table::Open,
    ];

    /// The table's name in the store (a RocksDB column family).
    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Pvs => "pvs",
            Table::Vgs => "vgs",
            Table::Lvs => "lvs",
            Table::Extents => "extents",
            Table::Reservations => "reservations",
            Table::Checksums => "checksums",
            Table::Open => "open",
        }
    }
}

/// One change in an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put(Table, Vec<u8>, Vec<u8>),
    Delete(Table, Vec<u8>),
}

/// What the metadata service needs from a store.
pub trait KvStore: Send + Sync + 'static {
    fn get(&self, table: Table, key: &[u8]) -> MetaResult<Option<Vec<u8>>>;
    /// Every (key, value) whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, table: Table, prefix: &[u8]) -> MetaResult<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Applies all changes atomically; durable when it returns.
    fn write(&self, changes: Vec<Change>) -> MetaResult<()>;
}

/// A store in memory: every write is "durable" the moment it returns, and
/// gone with the process. For simulation and for tests that exercise the
/// service logic without RocksDB; servers use [`RocksStore`].
#[derive(Debug, Default)]
pub struct MemStore {
    tables: Mutex<HashMap<Table, MemTable>>,
}

type MemTable = BTreeMap<Vec<u8>, Vec<u8>>;

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }
}

impl KvStore for MemStore {
    fn get(&self, table: Table, key: &[u8]) -> MetaResult<Option<Vec<u8>>> {
        Ok(self
            .tables
            .lock()
            .get(&table)
            .and_then(|t| t.get(key).cloned()))
    }

    fn scan_prefix(&self, table: Table, prefix: &[u8]) -> MetaResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let tables = self.tables.lock();
        Ok(tables
            .get(&table)
            .map(|t| {
                t.range(prefix.to_vec()..)
                    .take_while(|(key, _)| key.starts_with(prefix))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    fn write(&self, changes: Vec<Change>) -> MetaResult<()> {
        let mut tables = self.tables.lock();
        for change in changes {
            match change {
                Change::Put(table, key, value) => {
                    tables.entry(table).or_default().insert(key, value);
                }
                Change::Delete(table, key) => {
                    tables.entry(table).or_default().remove(&key);
                }
            }
        }
        Ok(())
    }
}

/// Lets a test keep a handle on a store it hands to a service (to reopen
/// the service over the same contents, as after a restart).
impl<S: KvStore> KvStore for std::sync::Arc<S> {
    fn get(&self, table: Table, key: &[u8]) -> MetaResult<Option<Vec<u8>>> {
        (**self).get(table, key)
    }

    fn scan_prefix(&self, table: Table, prefix: &[u8]) -> MetaResult<Vec<(Vec<u8>, Vec<u8>)>> {
        (**self).scan_prefix(table, prefix)
    }

    fn write(&self, changes: Vec<Change>) -> MetaResult<()> {
        (**self).write(changes)
    }
}

#[cfg(feature = "rocksdb")]
mod rocks {
    use std::path::Path;

    use rocksdb::{ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};

    use super::{Change, KvStore, Table};
    use crate::error::{MetaError, MetaResult};

    /// The embedded store: RocksDB in a directory of the data dir.
    pub struct RocksStore {
        db: DB,
    }

    impl RocksStore {
        pub fn open(path: &Path) -> MetaResult<RocksStore> {
            let mut options = Options::default();
            options.create_if_missing(true);
            options.create_missing_column_families(true);
            // Metadata is small; a modest write buffer keeps memory and
            // recovery time low.
            options.set_write_buffer_size(16 << 20);
            let families = Table::ALL
                .iter()
                .map(|t| ColumnFamilyDescriptor::new(t.name(), Options::default()));
            let db = DB::open_cf_descriptors(&options, path, families)
                .map_err(|e| MetaError::Store(format!("open {}: {e}", path.display())))?;
            Ok(RocksStore { db })
        }

        fn cf(&self, table: Table) -> MetaResult<&rocksdb::ColumnFamily> {
            self.db
                .cf_handle(table.name())
                .ok_or_else(|| MetaError::Store(format!("column family {} missing", table.name())))
        }
    }

    impl KvStore for RocksStore {
        fn get(&self, table: Table, key: &[u8]) -> MetaResult<Option<Vec<u8>>> {
            self.db
                .get_cf(self.cf(table)?, key)
                .map_err(|e| MetaError::Store(e.to_string()))
        }

        fn scan_prefix(&self, table: Table, prefix: &[u8]) -> MetaResult<Vec<(Vec<u8>, Vec<u8>)>> {
            let mut out = Vec::new();
            let iter = self.db.iterator_cf(
                self.cf(table)?,
                rocksdb::IteratorMode::From(prefix, rocksdb::Direction::Forward),
            );
            for item in iter {
                let (key, value) = item.map_err(|e| MetaError::Store(e.to_string()))?;
                if !key.starts_with(prefix) {
                    break;
                }
                out.push((key.into_vec(), value.into_vec()));
            }
            Ok(out)
        }

        fn write(&self, changes: Vec<Change>) -> MetaResult<()> {
            let mut batch = WriteBatch::default();
            for change in changes {
                match change {
                    Change::Put(table, key, value) => batch.put_cf(self.cf(table)?, key, value),
                    Change::Delete(table, key) => batch.delete_cf(self.cf(table)?, key),
                }
            }
            let mut options = WriteOptions::default();
            options.set_sync(true);
            self.db
                .write_opt(batch, &options)
                .map_err(|e| MetaError::Store(e.to_string()))
        }
    }
}
