//! Undo files: what a cycle (or a checksum resync) overwrote, so every retained recovery point
//! can be rebuilt while the replica moves on.
//!
//! Before cycle `k` is applied, the server saves the replica's current contents of every
//! range `k` will write into `undo/{k:020}.undo` (durably, before the replica changes).
//!
//! A checksum resync repairs the replica *between* cycles: it runs after cycle `S - 1` was
//! applied and before cycle `S` (its `from_seq`). Before it writes each batch of repaired
//! blocks it saves what the batch overwrites into an undo *part*,
//! `undo/{S:020}.r{p:08}.undo`, with `p` counting 0, 1, 2, … within the resync
//! ([`next_part`]). A part refuses to replace an existing file, so a batch re-sent after a
//! crash gets a new part number; several parts may cover the same byte.
//!
//! Undo files are ordered by [`UndoIndex::order`]: by sequence, and within one sequence
//! the parts by part number, then the cycle's own undo (`{S}.r*` before `{S}.undo`, which
//! follows `{S - 1}.undo`). Recovery point `j` (the replica after cycle `j`) is then, for
//! each byte, the copy saved by the *earliest* undo file ordered after `j` (every file with
//! sequence `> j`) that covers it, or else the replica's current byte. The earliest wins, so
//! a re-sent batch is harmless: its part saved half-written bytes, but an earlier part saved
//! the originals.
//!
//! **Format**: the byte layout, versions 1 to 3, is in `format.rs` with its encoder; the
//! golden tests pin it.
//!
//! **What a writer saves.** The writer asks its [`Source`] (the replica) where its data lies
//! (`SEEK_DATA`/`SEEK_HOLE` on a file): a hole becomes one zero entry without being read, data
//! is read in pieces of at most [`MAX_ENTRY_LEN`] (an all-zero piece becomes a zero entry), and
//! adjacent zero entries merge. The entries of a file, and so the memory and the time to
//! write it, are bounded by the holes and the MiB of data under its ranges — never by the
//! ranges' length. [`estimate_entries`] computes that bound without reading, so a cycle
//! whose undo would not fit is refused before it is acknowledged.
//!
//! Entries are sorted by offset and do not overlap. The file is written to `.tmp`, fsynced,
//! and renamed (a part is linked into place so that it cannot replace a file), then the
//! directory is fsynced; a reader checks the header CRC and sizes before allocating, and each
//! entry's data CRC when it reads it. [`load_all`] also checks that a file's header names the
//! same sequence and part as its file name.

mod format;
mod index;
mod reader;
mod source;
mod trim;
mod writer;

#[cfg(test)]
mod tests;

pub use format::{
    ENTRY_LEN, Entry, HEADER_LEN, MAGIC, MAX_ENTRIES, MAX_ENTRY_LEN, VERSION, encode_index,
};
pub use index::{UndoIndex, clean_tmp, file_name, load_all, next_part};
pub use reader::{read_entry, read_index};
pub use source::{Estimate, FnSource, Source, data_run, estimate, estimate_entries, from_fn};
pub use trim::{covered, trim};
pub use writer::{write, write_part};
