//! Calibrates `approx_record_size` against what the allocator really hands out.

// A counting global allocator needs `unsafe impl GlobalAlloc`; it only forwards
// to the system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use serde_json::Value;
use sluicegate_core::{approx_record_size, into_record};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only counts sizes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::SeqCst);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn estimate_is_close_to_real_allocations() {
    let page: String = {
        let mut s = String::from("[");
        for i in 0..1000 {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&format!(
                r#"{{"id":{i},"customer_id":{},"store_id":3,"ordered_at":"2024-01-01T00:{:02}:00Z","status":"shipped","subtotal":12.5,"tax_paid":1.13,"order_total":13.63,"item_count":2,"shipping":{{"method":"express","cost":4.95}},"tags":["a","bb"]}}"#,
                i * 7,
                i % 60
            ));
        }
        s.push(']');
        s
    };
    let before = LIVE.load(Ordering::SeqCst);
    let value: Value = serde_json::from_str(&page).unwrap();
    let Value::Array(items) = value else { panic!() };
    let records: Vec<_> = items.into_iter().map(into_record).collect();
    let real = (LIVE.load(Ordering::SeqCst) - before) as f64;
    let estimate: usize = records.iter().map(approx_record_size).sum();
    let ratio = estimate as f64 / real;
    println!("real {real} estimate {estimate} ratio {ratio:.2}");
    // The estimate includes the allocator's per-chunk overhead, which the counter
    // (requested bytes) does not see: it must be above the requested bytes, but
    // not absurdly so.
    assert!(
        (1.0..1.6).contains(&ratio),
        "estimate {estimate} vs requested {real} (ratio {ratio:.2})"
    );
}
