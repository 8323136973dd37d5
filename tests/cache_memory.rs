//! What a watch-cached resource holds on the heap, counted by a global allocator that keeps a
//! tally per thread: annotations the cache drops leave nothing behind.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use eac_controller::connection::api::{EnvironmentAccountConnection, INTENT_ANNOTATION};
use eac_controller::connection::controller::slim;
use serde_json::{Value, json};

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

// SAFETY: every call is passed on to the system allocator unchanged; the tally only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.with(|l| l.set(l.get() + layout.size() as isize));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.with(|l| l.set(l.get() - layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.with(|l| l.set(l.get() + new_size as isize - layout.size() as isize));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Bytes a cached copy of `object` holds: deserialized and slimmed as the watch does it.
fn held_by_cached(object: &Value) -> isize {
    let before = LIVE.with(Cell::get);
    let mut cached: EnvironmentAccountConnection =
        serde_json::from_value(object.clone()).expect("a valid resource");
    slim(&mut cached);
    let held = LIVE.with(Cell::get) - before;
    drop(cached);
    held
}

fn resource(annotations: Value, status: Option<Value>) -> Value {
    let mut o = json!({
        "apiVersion": "proton.eac.dev/v1alpha1",
        "kind": "EnvironmentAccountConnection",
        "metadata": {
            "name": "prod", "namespace": "team-a", "uid": "0b9c6f1e-7d2a-4c55-9f0e-1a2b3c4d5e6f",
            "resourceVersion": "42", "generation": 1, "finalizers": ["proton.eac.dev/finalizer"],
            "annotations": annotations,
        },
        "spec": {
            "managementAccountId": "111122223333", "environmentName": "prod",
            "roleArn": "arn:aws:iam::444455556666:role/proton",
        },
    });
    if let Some(status) = status {
        o["status"] = status;
    }
    o
}

const KUBECTL: &str = "kubectl.kubernetes.io/last-applied-configuration";

#[test]
fn others_annotations_dropped_by_the_cache_leave_no_empty_map_node_behind() {
    let applied = resource(json!({ KUBECTL: "{\"a whole manifest\": true}" }), None);
    let bare = resource(json!({}), None);
    assert_eq!(held_by_cached(&applied), held_by_cached(&bare));
}

#[test]
fn a_recorded_connection_s_cached_copy_holds_nothing_of_the_intent_to_create() {
    let status = json!({ "id": "conn-1", "arn": "arn:aws:proton:us-east-1:111122223333:environment-account-connection/conn-1" });
    let intent =
        r#"{"region":"us-east-1","account":"444455556666","sentAt":"2026-12-05T00:00:00Z"}"#;
    let with_intent = resource(
        json!({ KUBECTL: "{}", INTENT_ANNOTATION: intent }),
        Some(status.clone()),
    );
    let without = resource(json!({}), Some(status));
    assert_eq!(held_by_cached(&with_intent), held_by_cached(&without));
    // Before the connection is on record, the intent is kept, and costs its map node.
    let unanswered = resource(json!({ INTENT_ANNOTATION: intent }), None);
    assert!(held_by_cached(&unanswered) > held_by_cached(&resource(json!({}), None)) + 500);
}
