//! Manifest files read and parsed off the scan thread, so that no file holds up another: a
//! scan hands the files it must read to reader threads and takes what they finish within a
//! short patience; a file still being parsed then (a large one) stays waiting, its objects
//! as they were, and wakes the scan loop when it is done.
//!
//! At most `parallel` reads run within their budget at once; a read past its budget no longer
//! counts (it runs on, bounded by the size limit, and is reported), so a few huge files never
//! take every reader. A file is parsed again only when its content changed: each read hashes
//! the bytes, and content with the hash of the last parse is not parsed again (a `touch`, a
//! rewrite with the same bytes).

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use palisade_policy::manifest::Limits;

use super::file::{self, Content};
use super::settle::{Hint, Stamp};

/// One file to read.
#[derive(Clone, Debug)]
pub struct Job {
    pub rel: PathBuf,
    pub path: PathBuf,
    pub name: String,
    /// The file as the scan saw it, and what inotify said of that change.
    pub stamp: Stamp,
    pub hint: Hint,
    /// The hash of the content last parsed: content with this hash is not parsed again.
    pub known: Option<u128>,
}

/// A read finished.
#[derive(Debug)]
pub struct Done {
    pub job: Job,
    /// The content; `None` when its hash is `job.known` (not parsed again; `meta` is then the
    /// file's metadata once read).
    pub content: Option<Content>,
    pub meta: Option<std::fs::Metadata>,
    /// The hash of the bytes read (`None` when they could not be read).
    pub hash: Option<u128>,
    pub took: Duration,
}

/// Reader threads at most, per reader within budget (reads past their budget run on beside
/// new ones, up to this).
const MAX_THREADS_PER_READER: usize = 4;

/// Called when a read finishes after the scan stopped waiting for it.
pub type Waker = Box<dyn Fn() + Send>;

#[derive(Default)]
struct Shared {
    queue: VecDeque<Job>,
    /// Reads running, by file, with when they began.
    running: BTreeMap<PathBuf, Instant>,
    done: BTreeMap<PathBuf, Done>,
    /// The files of `queue` (so a scan asks about each file in O(log n), not O(queue)).
    queued: std::collections::BTreeSet<PathBuf>,
    threads: usize,
    waker: Option<Waker>,
    /// Files parsed since the count was last taken.
    parsed: u64,
    /// Reads the scan waits for (finishing them wakes it, not the loop).
    awaited: std::collections::BTreeSet<PathBuf>,
}

pub struct Reader {
    shared: Arc<(Mutex<Shared>, Condvar)>,
    limits: Limits,
    default_ns: String,
    parallel: usize,
    /// A read taking longer is past its budget: reported, and another reader may start.
    pub budget: Duration,
}

impl Reader {
    pub fn new(limits: Limits, default_ns: String, parallel: usize, budget: Duration) -> Reader {
        Reader {
            shared: Arc::default(),
            limits,
            default_ns,
            parallel: parallel.max(1),
            budget,
        }
    }

    /// What to call when a read finishes while no scan waits for it.
    pub fn set_waker(&self, waker: Waker) {
        self.lock().waker = Some(waker);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.0.lock().expect("reader lock")
    }

    /// Whether `rel` is queued, being read or read and not taken yet, and since when it is
    /// being read.
    pub fn busy(&self, rel: &std::path::Path) -> Option<Option<Instant>> {
        let s = self.lock();
        match s.running.get(rel) {
            Some(t) => Some(Some(*t)),
            None => (s.done.contains_key(rel) || s.queued.contains(rel)).then_some(None),
        }
    }

    /// Every finished read, by file.
    pub fn take_all(&self) -> BTreeMap<PathBuf, Done> {
        std::mem::take(&mut self.lock().done)
    }

    /// Queue `jobs` and wait up to `patience` for them; returns when all are done or the
    /// patience is spent.
    pub fn read_all(&self, jobs: Vec<Job>, patience: Duration) {
        if jobs.is_empty() {
            return;
        }
        {
            let mut s = self.lock();
            s.awaited.extend(jobs.iter().map(|j| j.rel.clone()));
            s.queued.extend(jobs.iter().map(|j| j.rel.clone()));
            s.queue.extend(jobs);
        }
        self.start_readers();
        let deadline = Instant::now() + patience;
        let (lock, cv) = &*self.shared;
        let mut s = lock.lock().expect("reader lock");
        while !s.awaited.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            s = cv.wait_timeout(s, left).expect("reader lock").0;
        }
        // From now on, what finishes wakes the loop.
        s.awaited.clear();
    }

    /// Start readers while fewer than `parallel` run within their budget.
    pub fn start_readers(&self) {
        let now = Instant::now();
        let mut s = self.lock();
        let within = s
            .running
            .values()
            .filter(|t| now.saturating_duration_since(**t) < self.budget)
            .count();
        // Threads not running a read yet are about to take one from the queue.
        let idle = s.threads.saturating_sub(s.running.len());
        let wanted = s.queue.len().saturating_sub(idle);
        // Reads past their budget do not count, up to a hard cap on threads.
        let room = self
            .parallel
            .saturating_sub(within + idle)
            .min((self.parallel * MAX_THREADS_PER_READER).saturating_sub(s.threads));
        for _ in 0..wanted.min(room) {
            let shared = self.shared.clone();
            let (limits, ns) = (self.limits.clone(), self.default_ns.clone());
            let started = std::thread::Builder::new()
                .name("manifest-reader".into())
                .spawn(move || work(&shared, &limits, &ns));
            match started {
                Ok(_) => s.threads += 1,
                Err(e) => {
                    // Out of threads: the files stay queued (waiting, their objects as they
                    // were) and the next scan tries again.
                    tracing::warn!("cannot start a manifest reader thread: {e}");
                    break;
                }
            }
        }
    }

    /// Files parsed since the last call.
    pub fn take_parsed(&self) -> u64 {
        std::mem::take(&mut self.lock().parsed)
    }

    /// When the first read running now passes its budget.
    pub fn next_over_budget(&self) -> Option<Instant> {
        let now = Instant::now();
        self.lock()
            .running
            .values()
            .map(|t| *t + self.budget)
            .filter(|t| *t > now)
            .min()
    }
}

/// A reader thread: reads queued files until none is left.
fn work(shared: &(Mutex<Shared>, Condvar), limits: &Limits, default_ns: &str) {
    let (lock, cv) = shared;
    loop {
        let job = {
            let mut s = lock.lock().expect("reader lock");
            match s.queue.pop_front() {
                Some(job) => {
                    s.queued.remove(&job.rel);
                    s.running.insert(job.rel.clone(), Instant::now());
                    job
                }
                None => {
                    s.threads -= 1;
                    return;
                }
            }
        };
        let started = Instant::now();
        // A parser that panics fails this file alone (kept as it was, reported), never the
        // reader's bookkeeping.
        let (content, meta, hash) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read(&job, limits, default_ns)))
                .unwrap_or_else(|_| {
                    let why = "reading or parsing it failed (a bug: please report it); what it held stays in force";
                    (Some(file::broken(&job.name, why.into(), false)), None, None)
                });
        let done = Done {
            content,
            meta,
            hash,
            took: started.elapsed(),
            job,
        };
        let mut s = lock.lock().expect("reader lock");
        let rel = done.job.rel.clone();
        if done.content.as_ref().is_some_and(|c| c.read_as.is_some()) {
            s.parsed += 1;
        }
        s.running.remove(&rel);
        s.done.insert(rel.clone(), done);
        if s.awaited.remove(&rel) {
            cv.notify_all();
        } else if let Some(wake) = &s.waker {
            wake();
        }
    }
}

/// Read one file: its content unless its hash is the one last parsed.
fn read(
    job: &Job,
    limits: &Limits,
    default_ns: &str,
) -> (Option<Content>, Option<std::fs::Metadata>, Option<u128>) {
    match file::read_bytes(&job.path, &job.name, limits) {
        Err(content) => (Some(*content), None, None),
        Ok((bytes, meta)) => {
            let hash = xxhash_rust::xxh3::xxh3_128(&bytes);
            if job.known == Some(hash) {
                return (None, Some(meta), Some(hash));
            }
            let content = file::parse_bytes(&job.name, bytes, meta, limits, default_ns);
            (Some(content), None, Some(hash))
        }
    }
}
