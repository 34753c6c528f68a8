//! The ownership word of a slot and its holder words: the word-level steps
//! of the slot protocol (see [`crate::slot_pool`] for the protocol and
//! where each step is used). On `crate::sync` atomics, so that the loom
//! models in `tests/loom.rs` run these very functions on heap words.

use crate::sync::{AtomicU64, Ordering};

/// Slot states (see the module table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SlotState {
    /// In the free ring.
    Free = 0,
    /// In a publisher's private cache.
    Cached = 1,
    /// Being written.
    Loaned = 2,
    /// Sent: queued for, or held by, the groups whose bits are set.
    Published = 3,
}

/// Bits of `gen` in the ownership word.
pub const GEN_MASK: u32 = (1 << 24) - 1;

/// A decoded `own` word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Own {
    /// Generation (24 bits).
    pub gen: u32,
    /// State, or `None` if the byte is not a known state (corruption).
    pub state: Option<SlotState>,
    /// Client index (`Cached`, `Loaned`), else 0.
    pub who: u32,
    /// `Published`: the groups it waits for.
    pub queued: u16,
    /// `Published`: the groups holding it.
    pub held: u16,
}

impl Own {
    /// Packs a `Free`, `Cached` or `Loaned` word.
    pub fn pack(gen: u32, state: SlotState, who: u32) -> u64 {
        ((gen & GEN_MASK) as u64) << 40 | (state as u64) << 32 | who as u64
    }

    /// Packs a `Published` word.
    pub fn published(gen: u32, queued: u16, held: u16) -> u64 {
        ((gen & GEN_MASK) as u64) << 40 | (SlotState::Published as u64) << 32 | (held as u64) << 16 | queued as u64
    }

    /// Unpacks one.
    pub fn unpack(w: u64) -> Own {
        let state = match (w >> 32) as u8 {
            0 => Some(SlotState::Free),
            1 => Some(SlotState::Cached),
            2 => Some(SlotState::Loaned),
            3 => Some(SlotState::Published),
            _ => None,
        };
        let gen = (w >> 40) as u32;
        let low = w as u32;
        match state {
            Some(SlotState::Published) => Own { gen, state, who: 0, queued: low as u16, held: (low >> 16) as u16 },
            _ => Own { gen, state, who: low, queued: 0, held: 0 },
        }
    }

    /// Whether the slot is free: `Free`, or `Published` with no group left.
    pub fn is_free(&self) -> bool {
        match self.state {
            Some(SlotState::Free) => true,
            Some(SlotState::Published) => self.queued | self.held == 0,
            _ => false,
        }
    }
}

/// The holder word that locks a slot's `gen` for `client`.
pub fn holder_lock(gen: u32, client: u32) -> u64 {
    ((gen & GEN_MASK) as u64) << 40 | (client as u64 + 1)
}

/// Whether a holder word names a holder (of some life).
fn is_locked(word: u64) -> bool {
    word as u32 != 0
}

/// The life a holder word was locked for.
fn holder_gen(word: u64) -> u32 {
    (word >> 40) as u32 & GEN_MASK
}

/// Whether life `a` came before life `b` (24-bit serial numbers: `a` is
/// older when `b` is less than half the range ahead of it).
fn older(a: u32, b: u32) -> bool {
    let d = b.wrapping_sub(a) & GEN_MASK;
    d != 0 && d < 1 << 23
}

/// The daemon's audit of one holder word: clears a lock that names a life
/// of the slot that is over (the slot's `own` now says another `gen`), so
/// that no lock outlives the 2^24 lives after which its `gen` would match
/// again. `true` if it cleared one. A lock of the current life is left: its
/// holder has the message, or is between its two claim steps.
pub fn clear_stale(own: &AtomicU64, holder: &AtomicU64) -> bool {
    // SYNC: holder-lock — Acquire pairs with the locker's AcqRel CAS, which
    // came after its Acquire load of `own`: the `own` load below then sees
    // that life or a later one, never an earlier one.
    let h = holder.load(Ordering::Acquire);
    if !is_locked(h) {
        return false;
    }
    let gen = Own::unpack(own.load(Ordering::Acquire)).gen;
    if holder_gen(h) == gen {
        return false;
    }
    // SYNC: holder-lock — AcqRel; loses to a receiver that locks the word
    // for a new life meanwhile.
    holder.compare_exchange(h, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok()
}

/// The client a holder word names for life `gen` of its slot, if any.
pub fn holder_of(word: u64, gen: u32) -> Option<u32> {
    let who = word as u32;
    (who != 0 && (word >> 40) as u32 == gen & GEN_MASK).then(|| who - 1)
}

/// A group's claim of a message: locks the holder word for life `gen` of
/// the slot (read as `w`, Acquire, by the caller), then moves group slot
/// `k`'s bit from `queued` to `held`. `false` for a message that is not
/// `Published` and queued for `k`, a life another receiver of the group
/// has locked (a duplicate entry), or a message its publisher took back or
/// dropped meanwhile.
pub fn claim(own: &AtomicU64, holder: &AtomicU64, mut w: u64, k: u32, client: u32) -> bool {
    let bit = 1u16 << k;
    let first = Own::unpack(w);
    if first.state != Some(SlotState::Published) || first.queued & bit == 0 {
        return false;
    }
    // The lock is taken from a word that names no life, or an older one
    // than ours (the previous life's lock, left in place by its release;
    // or 0, written by the daemon's audit meanwhile: then try again). A
    // word naming our life means another receiver of the group has it (we
    // popped a duplicate); one naming a later life means our view of the
    // slot is stale: either way the entry is skipped, and nobody's lock is
    // overwritten.
    let mut h = holder.load(Ordering::Acquire);
    loop {
        if is_locked(h) && !older(holder_gen(h), first.gen) {
            return false;
        }
        // SYNC: holder-lock — AcqRel: one receiver per life of the slot and
        // group wins; pairs with competing locks and the daemon's resets.
        match holder.compare_exchange(h, holder_lock(first.gen, client), Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => break,
            Err(x) => h = x,
        }
    }
    crate::crash_point!(ClaimLocked);
    loop {
        let o = Own::unpack(w);
        if o.state != Some(SlotState::Published) || o.gen != first.gen || o.queued & bit == 0 {
            return false; // rolled back or dropped by its publisher meanwhile
        }
        let new = (w & !(bit as u64)) | ((bit as u64) << 16);
        // SYNC: slot-claim — AcqRel pairs with the other groups' claims and
        // releases of this word and with a publisher's roll-back.
        match own.compare_exchange_weak(w, new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return true,
            Err(x) => w = x,
        }
    }
}

/// A group's release: clears group slot `k`'s `held` bit. `Some(true)` if
/// that was the slot's last bit (the caller frees the slot), `None` if the
/// word does not say group `k` holds the slot (overwritten by a faulty
/// process; nothing is changed).
pub fn release(own: &AtomicU64, k: u32) -> Option<bool> {
    let bit = 1u16 << k;
    // SYNC: slot-release — Acquire pairs with the other groups' releasing
    // CASes: when ours is the last bit, their reads of the message happen
    // before the slot is freed.
    let w = own.load(Ordering::Acquire);
    let o = Own::unpack(w);
    if o.state == Some(SlotState::Published) && o.queued | o.held == bit {
        // Ours is the last bit. After a publish, bits are only ever cleared
        // (or moved from queued to held by the group that locked the holder
        // word), and nobody else has one left to clear: no one else writes
        // this word before the slot is free again, so a store does (one
        // locked instruction less per message, for the common one-group
        // subsystem).
        // SYNC: slot-release — Release orders our reads of the message (and,
        // through the Acquire load, the other groups') before the next
        // owner's writes; pairs with `claim_free`'s CAS.
        own.store(w & !((bit as u64) << 16), Ordering::Release);
        return Some(true);
    }
    let new = update(own, |o, w| (o.held & bit != 0).then_some(w & !((bit as u64) << 16)))?;
    Some(Own::unpack(new).is_free())
}

/// A publisher drops group slot `k`'s copy of its message in life `gen` of
/// the slot (a lossy group's full queue, or a blocking group it gave up
/// on): clears its `queued` bit. `Some(true)` if that was the slot's last
/// bit (the caller frees the slot), `None` if the bit was no longer queued
/// in that life (a receiver claimed the message through a duplicate entry:
/// it is delivered).
pub fn drop_queued(own: &AtomicU64, k: u32, gen: u32) -> Option<bool> {
    let bit = 1u16 << k;
    // Only in the publisher's own life of the slot: once every group
    // released it, the slot may be another message already.
    let new = update(own, |o, w| (o.gen == gen & GEN_MASK && o.queued & bit != 0).then_some(w & !(bit as u64)))?;
    Some(Own::unpack(new).is_free())
}

/// The daemon gives a dead receiver's message back to group slot `k`: its
/// bit moves from `held` back to `queued`, in life `gen` of the slot.
/// `false` if the word no longer says group `k` holds it in that life.
pub fn unhold(own: &AtomicU64, k: u32, gen: u32) -> bool {
    let bit = 1u64 << k;
    update(own, |o, w| (o.gen == gen && o.held & (1 << k) != 0).then_some((w & !(bit << 16)) | bit)).is_some()
}

/// The daemon drops group slot `k`'s copy, queued or held (its group is
/// gone, or its queue is a full tap's). `Some(true)` if that was the
/// slot's last bit (the caller frees the slot); `None` if it had no such bit.
pub fn clear(own: &AtomicU64, k: u32) -> Option<bool> {
    let bits = (1u64 << k) | (1u64 << (16 + k));
    let new = update(own, |o, w| ((o.queued | o.held) & (1 << k) != 0).then_some(w & !bits))?;
    Some(Own::unpack(new).is_free())
}

/// Changes a `Published` word by CAS, as `f(unpacked, word)` says (`None`:
/// leave it, and give up); retries while others change other bits.
/// Returns the new word.
fn update(own: &AtomicU64, f: impl Fn(Own, u64) -> Option<u64>) -> Option<u64> {
    let mut w = own.load(Ordering::Acquire);
    loop {
        let o = Own::unpack(w);
        if o.state != Some(SlotState::Published) {
            return None;
        }
        let new = f(o, w)?;
        // SYNC: slot-claim / slot-release — AcqRel pairs with every other
        // claim, release and drop of this word (the one that clears the
        // slot's last bit sees every other group's reads before it), and
        // with `claim_free`'s CAS of the next owner.
        match own.compare_exchange_weak(w, new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Some(new),
            Err(x) => w = x,
        }
    }
}

/// A publisher takes back a send nothing was pushed for: `Published`
/// (exactly `word`) back to `Loaned` by `client`, with a new `gen`. `false`
/// if a receiver claimed it meanwhile through a duplicate entry (then it is
/// delivered).
pub fn roll_back(own: &AtomicU64, word: u64, client: u32) -> bool {
    let o = Own::unpack(word);
    let loaned = Own::pack(o.gen.wrapping_add(1), SlotState::Loaned, client);
    // SYNC: slot-claim — AcqRel pairs with a receiver's claim CAS; only one
    // of the two wins.
    own.compare_exchange(word, loaned, Ordering::AcqRel, Ordering::Relaxed).is_ok()
}
