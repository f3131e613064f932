//! FFmpeg's log (`av_log`) into `tracing`, so that what FFmpeg says — "Cannot load libcuda.so.1",
//! "OpenEncodeSessionEx failed: …", decoder errors — lands in the daemon's log (human or JSON)
//! with a level and the context it came from, instead of on raw stderr.
//!
//! FFmpeg calls the callback with a printf format and a `va_list` (libavutil/log.h,
//! `av_log_set_callback`). Rust cannot define C-variadic functions, but it can receive a
//! `va_list` and hand it on: `av_log_format_line2` formats it into our buffer. Each call becomes
//! one event with target `ffmpeg` and fields `class` (the context's AVClass name, e.g.
//! `AVCodecContext`, `AVHWDeviceContext`) and `item` (its instance name, e.g. `h264_nvenc`).
//!
//! The callback may run on any thread, concurrently (codec and filter threads log too). It formats
//! into a fixed buffer on its stack (a longer line is cut at [`LINE_MAX`] bytes and ends with
//! "…"), keeps only the start of a line FFmpeg writes in pieces (per thread, until the piece that
//! ends it), skips the formatting when neither FFmpeg's level (`av_log_get_level`) nor the
//! subscriber wants the event, and never unwinds into C.
#![deny(clippy::undocumented_unsafe_blocks, clippy::multiple_unsafe_ops_per_block)]

use std::cell::Cell;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::Once;

use ffmpeg_next::ffi as sys;
use tracing::Level;

/// The longest line forwarded, in bytes; FFmpeg's own default callback uses a 1024-byte line too.
pub const LINE_MAX: usize = 1024;

/// The tracing level of an FFmpeg level: panic, fatal and error → ERROR, warning → WARN,
/// info → INFO, verbose → DEBUG, debug and trace → TRACE. `None` for AV_LOG_QUIET (never logged).
pub fn level_of(av_level: c_int) -> Option<Level> {
    match av_level {
        l if l < sys::AV_LOG_PANIC => None,
        l if l <= sys::AV_LOG_ERROR => Some(Level::ERROR),
        l if l <= sys::AV_LOG_WARNING => Some(Level::WARN),
        l if l <= sys::AV_LOG_INFO => Some(Level::INFO),
        l if l <= sys::AV_LOG_VERBOSE => Some(Level::DEBUG),
        _ => Some(Level::TRACE),
    }
}

/// Sends FFmpeg's log to `tracing` from now on, for the whole process. Idempotent. Call it once
/// logging is set up and before FFmpeg is first used, so that no line goes to stderr instead.
pub fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // SAFETY: av_log_set_callback stores a function pointer; `callback` has exactly the
        // signature libavutil expects and is safe to call from any thread at any time.
        unsafe { sys::av_log_set_callback(Some(callback)) };
    });
}

/// The C `va_list` as it crosses a function boundary, the type of the callback's last
/// parameter: on x86-64 `va_list` is a one-element array of `__va_list_tag` and decays to a
/// pointer to it; on AArch64 and others it is passed as the `va_list` type itself.
#[cfg(target_arch = "x86_64")]
type VaList = *mut sys::__va_list_tag;
#[cfg(not(target_arch = "x86_64"))]
type VaList = sys::va_list;

/// A message FFmpeg writes in pieces (its CUDA errors come as "cuInit(0) failed", then
/// " -> CUDA_ERROR_…: …", then "\n") is one line: pieces wait here until the one that ends it.
struct Pending {
    /// The context the first piece came from (its address); a piece from another context is
    /// another message.
    context: usize,
    level: c_int,
    class: &'static str,
    item: String,
    text: String,
}

thread_local! {
    /// Set while this thread forwards a line, so that a subscriber that itself makes FFmpeg log
    /// does not recurse.
    static FORWARDING: Cell<bool> = const { Cell::new(false) };
    /// The start of a line not ended yet, on this thread.
    static PENDING: std::cell::RefCell<Option<Pending>> = const { std::cell::RefCell::new(None) };
}

/// Clears [`FORWARDING`] however forwarding ends, a subscriber's panic included.
struct Forwarding;

impl Drop for Forwarding {
    fn drop(&mut self) {
        FORWARDING.with(|f| f.set(false));
    }
}

/// The callback given to av_log_set_callback.
unsafe extern "C" fn callback(avcl: *mut c_void, level: c_int, fmt: *const c_char, vl: VaList) {
    // A panic in a subscriber must not unwind into C; the line is lost, nothing else.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if FORWARDING.with(|f| f.replace(true)) {
            return;
        }
        let _forwarding = Forwarding;
        // SAFETY: the arguments are FFmpeg's, passed on unchanged (see `forward`).
        unsafe { forward(avcl, level, fmt, vl) };
    }));
}

/// # Safety
/// The arguments are those FFmpeg passed to the log callback: `avcl` null or a logging context,
/// `fmt` a printf format (or null) and `vl` its arguments, not used before.
unsafe fn forward(avcl: *mut c_void, level: c_int, fmt: *const c_char, vl: VaList) {
    // The low byte is the level; higher bits may carry a colour (AV_LOG_C, libavutil/log.h).
    let level = level & 0xff;
    // As the default callback does: lines above FFmpeg's level are not for anyone.
    // SAFETY: av_log_get_level reads a global int; no preconditions.
    if level > unsafe { sys::av_log_get_level() } || fmt.is_null() {
        return;
    }
    let Some(tracing_level) = level_of(level) else { return };
    if !enabled(tracing_level) {
        return;
    }
    let mut line = [0u8; LINE_MAX];
    // 0: the message alone; the context goes into fields, not a "[h264 @ 0x…] " prefix.
    let mut print_prefix: c_int = 0;
    // SAFETY: `fmt` and `vl` are the format and arguments FFmpeg passed to this callback, used
    // here once, as av_log_format_line2 expects; `avcl` is the context pointer FFmpeg passed
    // (null or a struct starting with an AVClass pointer). `line` is writable for LINE_MAX bytes,
    // the size given, and av_log_format_line2 NUL-terminates within it, truncating if needed.
    let needed = unsafe {
        sys::av_log_format_line2(avcl, level, fmt, vl, line.as_mut_ptr().cast(), LINE_MAX as c_int, &mut print_prefix)
    };
    if needed < 0 {
        return;
    }
    let piece = CStr::from_bytes_until_nul(&line).map(CStr::to_string_lossy).unwrap_or_default();
    let cut = needed as usize >= LINE_MAX;
    // SAFETY: `avcl` is FFmpeg's context pointer for this call (the caller's guarantee).
    let (class, item) = unsafe { context_names(avcl) };
    let ended = piece.ends_with('\n') || cut;
    let (whole, orphan) = PENDING.with(|p| {
        let mut pending = p.borrow_mut();
        // An unended piece of another context was a message of its own after all.
        let orphan = pending.take_if(|p| p.context != avcl as usize);
        let mut line = pending.take().unwrap_or_else(|| Pending {
            context: avcl as usize,
            level,
            class,
            item: item.to_string(),
            text: String::new(),
        });
        // The most severe level of the pieces is the line's.
        line.level = line.level.min(level);
        line.text.push_str(&piece);
        if ended || line.text.len() >= LINE_MAX {
            (Some((line, cut)), orphan)
        } else {
            *pending = Some(line);
            (None, orphan)
        }
    });
    if let Some(orphan) = orphan {
        emit_line(orphan, false, tracing_level);
    }
    let Some((line, cut)) = whole else { return };
    emit_line(line, cut, tracing_level);
}

/// Emits a whole line; `cut` when FFmpeg's text did not fit in the buffer.
fn emit_line(line: Pending, cut: bool, fallback: Level) {
    let text = line.text.trim_end();
    if text.is_empty() {
        return;
    }
    // A line cut at the buffer's end says so, rather than pass for the whole message.
    let text = if cut { std::borrow::Cow::Owned(format!("{text}…")) } else { text.into() };
    let level = level_of(line.level).unwrap_or(fallback);
    emit(level, line.class, &line.item, &text);
}

fn enabled(level: Level) -> bool {
    match level {
        Level::ERROR => tracing::enabled!(target: "ffmpeg", Level::ERROR),
        Level::WARN => tracing::enabled!(target: "ffmpeg", Level::WARN),
        Level::INFO => tracing::enabled!(target: "ffmpeg", Level::INFO),
        Level::DEBUG => tracing::enabled!(target: "ffmpeg", Level::DEBUG),
        Level::TRACE => tracing::enabled!(target: "ffmpeg", Level::TRACE),
    }
}

fn emit(level: Level, class: &str, item: &str, text: &str) {
    match level {
        Level::ERROR => tracing::error!(target: "ffmpeg", class, item, "{text}"),
        Level::WARN => tracing::warn!(target: "ffmpeg", class, item, "{text}"),
        Level::INFO => tracing::info!(target: "ffmpeg", class, item, "{text}"),
        Level::DEBUG => tracing::debug!(target: "ffmpeg", class, item, "{text}"),
        Level::TRACE => tracing::trace!(target: "ffmpeg", class, item, "{text}"),
    }
}

/// The class name and the instance name of the context FFmpeg logged for, as FFmpeg's default
/// callback finds them (libavutil/log.h: a logging context is a struct whose first member is a
/// pointer to an AVClass). Empty strings for a null context or class.
///
/// # Safety
/// `avcl` is null or a live logging context, as FFmpeg passes it to the log callback; the names
/// are used only while it lives (during the callback).
unsafe fn context_names<'a>(avcl: *mut c_void) -> (&'static str, &'a str) {
    if avcl.is_null() {
        return ("", "");
    }
    // SAFETY: a non-null context passed to av_log starts with a `const AVClass *`
    // (libavutil/log.h); reading that pointer.
    let class = unsafe { *avcl.cast::<*const sys::AVClass>() };
    if class.is_null() {
        return ("", "");
    }
    // SAFETY: `class` points at a static AVClass; reading two plain fields.
    let (name, item_name) = (unsafe { (*class).class_name }, unsafe { (*class).item_name });
    // SAFETY: class_name is a static C string (or null).
    let class_name = unsafe { c_str(name) };
    // SAFETY: as FFmpeg's default callback does, item_name is called with its own context, and
    // returns a C string that lives at least as long as the context (a static name or a field).
    let item = item_name.map(|f| unsafe { f(avcl) });
    // SAFETY: `item` is null or such a string.
    let item = item.map_or("", |p| unsafe { c_str(p) });
    (class_name, item)
}

/// # Safety
/// `p` is null or a NUL-terminated string that outlives `'a`.
unsafe fn c_str<'a>(p: *const c_char) -> &'a str {
    if p.is_null() {
        return "";
    }
    // SAFETY: the caller's guarantee.
    unsafe { CStr::from_ptr(p) }.to_str().unwrap_or("")
}

/// Logs `text` through `av_log` at `level`, with `avcl` as the context, as FFmpeg's own code
/// would (the `%s` format keeps `text` from being read as a format).
#[cfg(test)]
pub(crate) fn log_through_ffmpeg(avcl: *mut c_void, level: c_int, text: &str) {
    let text = std::ffi::CString::new(text).expect("no NUL in test text");
    // SAFETY: a C-variadic call with a "%s" format and one matching C string argument; `avcl`
    // is null or a context the caller keeps alive.
    unsafe { sys::av_log(avcl, level, c"%s".as_ptr(), text.as_ptr()) };
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, SubscriberExt};

    use super::*;

    #[derive(Debug, Clone, Default, PartialEq)]
    struct Seen {
        level: String,
        target: String,
        message: String,
        class: String,
        item: String,
    }

    impl Visit for Seen {
        fn record_str(&mut self, field: &Field, value: &str) {
            match field.name() {
                "class" => self.class = value.to_string(),
                "item" => self.item = value.to_string(),
                _ => {}
            }
        }
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.message = format!("{value:?}");
            }
        }
    }

    /// Keeps every `ffmpeg` event it sees.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<Seen>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            if event.metadata().target() != "ffmpeg" {
                return;
            }
            let mut seen = Seen {
                level: event.metadata().level().to_string(),
                target: event.metadata().target().to_string(),
                ..Seen::default()
            };
            event.record(&mut seen);
            self.0.lock().expect("lock").push(seen);
        }
    }

    /// Runs `f` with the bridge installed and a capturing subscriber on this thread.
    fn captured(f: impl FnOnce()) -> Vec<Seen> {
        super::super::init();
        install();
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry().with(capture.clone());
        tracing::subscriber::with_default(subscriber, f);
        capture.0.lock().expect("lock").clone()
    }

    #[test]
    fn levels_map_to_tracing_levels() {
        assert_eq!(level_of(sys::AV_LOG_QUIET), None);
        assert_eq!(level_of(sys::AV_LOG_PANIC), Some(Level::ERROR));
        assert_eq!(level_of(sys::AV_LOG_FATAL), Some(Level::ERROR));
        assert_eq!(level_of(sys::AV_LOG_ERROR), Some(Level::ERROR));
        assert_eq!(level_of(sys::AV_LOG_WARNING), Some(Level::WARN));
        assert_eq!(level_of(sys::AV_LOG_INFO), Some(Level::INFO));
        assert_eq!(level_of(sys::AV_LOG_VERBOSE), Some(Level::DEBUG));
        assert_eq!(level_of(sys::AV_LOG_DEBUG), Some(Level::TRACE));
        assert_eq!(level_of(sys::AV_LOG_TRACE), Some(Level::TRACE));
    }

    #[test]
    fn an_error_line_arrives_with_its_level_and_text() {
        let seen =
            captured(|| log_through_ffmpeg(std::ptr::null_mut(), sys::AV_LOG_ERROR, "Cannot load libcuda.so.1\n"));
        let expected = Seen {
            level: "ERROR".into(),
            target: "ffmpeg".into(),
            message: "Cannot load libcuda.so.1".into(),
            ..Seen::default()
        };
        assert_eq!(seen, vec![expected]);
    }

    #[test]
    fn lines_above_ffmpegs_level_are_not_forwarded() {
        // ffi::init sets FFmpeg's level to errors; an info line stays out, as on stderr before.
        let seen = captured(|| {
            // SAFETY: reads a global int.
            assert!(unsafe { sys::av_log_get_level() } < sys::AV_LOG_INFO);
            log_through_ffmpeg(std::ptr::null_mut(), sys::AV_LOG_INFO, "using cpu capabilities");
            log_through_ffmpeg(std::ptr::null_mut(), sys::AV_LOG_FATAL, "fatal\n");
        });
        let got: Vec<(&str, &str)> = seen.iter().map(|s| (s.level.as_str(), s.message.as_str())).collect();
        assert_eq!(got, [("ERROR", "fatal")]);
    }

    #[test]
    fn a_codec_that_refuses_an_option_is_heard_with_its_class_and_name() {
        use ffmpeg_next::{Dictionary, codec, decoder};
        let seen = captured(|| {
            let h264 = decoder::find(codec::Id::H264).expect("h264");
            let mut opts = Dictionary::new();
            opts.set("threads", "not-a-number");
            let opened = codec::Context::new_with_codec(h264).decoder().open_as_with(h264, opts);
            assert!(opened.is_err(), "the option does not parse");
        });
        let line = seen
            .iter()
            .find(|s| s.message.starts_with("Unable to parse option value"))
            .unwrap_or_else(|| panic!("{seen:?}"));
        assert_eq!((line.level.as_str(), line.class.as_str(), line.item.as_str()), ("ERROR", "AVCodecContext", "h264"));
        assert_eq!(line.message, "Unable to parse option value \"not-a-number\"");
    }

    #[test]
    fn a_message_written_in_pieces_is_one_line_and_another_context_ends_it() {
        // As FFmpeg's CUDA helper logs a failed call: the call, the error, then the line end.
        let mut a = 0u64;
        let mut b = 0u64;
        let (a, b): (*mut c_void, *mut c_void) = ((&raw mut a).cast(), (&raw mut b).cast());
        // Two contexts whose first word is null: no AVClass, so empty class and item fields.
        let seen = captured(|| {
            log_through_ffmpeg(std::ptr::null_mut(), sys::AV_LOG_ERROR, "cuInit(0) failed");
            log_through_ffmpeg(
                std::ptr::null_mut(),
                sys::AV_LOG_ERROR,
                " -> CUDA_ERROR_NO_DEVICE: no CUDA-capable device",
            );
            log_through_ffmpeg(std::ptr::null_mut(), sys::AV_LOG_ERROR, "\n");
            log_through_ffmpeg(a, sys::AV_LOG_ERROR, "unended");
            log_through_ffmpeg(b, sys::AV_LOG_ERROR, "other context\n");
        });
        let got: Vec<(&str, &str)> = seen.iter().map(|s| (s.level.as_str(), s.message.as_str())).collect();
        assert_eq!(
            got,
            [
                ("ERROR", "cuInit(0) failed -> CUDA_ERROR_NO_DEVICE: no CUDA-capable device"),
                ("ERROR", "unended"),
                ("ERROR", "other context"),
            ]
        );
    }

    #[test]
    fn a_subscriber_that_panics_loses_its_line_only() {
        #[derive(Clone, Default)]
        struct PanicOnce(Arc<Mutex<bool>>);
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for PanicOnce {
            fn on_event(&self, _: &tracing::Event<'_>, _: Context<'_, S>) {
                let mut panicked = self.0.lock().expect("lock");
                if !*panicked {
                    *panicked = true;
                    drop(panicked);
                    panic!("a subscriber bug");
                }
            }
        }
        super::super::init();
        install();
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry().with(PanicOnce::default()).with(capture.clone());
        tracing::subscriber::with_default(subscriber, || {
            log_through_ffmpeg(std::ptr::null_mut(), sys::AV_LOG_ERROR, "first\n");
            log_through_ffmpeg(std::ptr::null_mut(), sys::AV_LOG_ERROR, "second\n");
        });
        let seen = capture.0.lock().expect("lock").clone();
        assert_eq!(seen.last().map(|s| s.message.as_str()), Some("second"), "{seen:?}");
    }

    #[test]
    fn long_lines_are_cut_and_marked() {
        let long = "x".repeat(3 * LINE_MAX);
        let seen = captured(|| log_through_ffmpeg(std::ptr::null_mut(), sys::AV_LOG_ERROR, &long));
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].message, format!("{}…", &long[..LINE_MAX - 1]));
    }

    #[test]
    fn a_thread_without_a_subscriber_is_not_disturbed() {
        super::super::init();
        install();
        // No subscriber on this thread: the line goes nowhere, and nothing breaks.
        std::thread::spawn(|| log_through_ffmpeg(std::ptr::null_mut(), sys::AV_LOG_ERROR, "nobody listens"))
            .join()
            .expect("no panic");
    }
}
