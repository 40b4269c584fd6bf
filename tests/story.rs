//! The todo story of the README, asserted step by step (the example prints it).

#[path = "../examples/todo_story.rs"]
mod story;

#[test]
fn the_todo_story_holds() {
    let steps = story::run_story();
    for s in &steps {
        assert_eq!(s.status, s.expected, "{}", s.what);
    }
    let get = steps[0]
        .todos_saw
        .as_ref()
        .expect("todos saw reminder's GET");
    assert_eq!(get.header("x-auth-subject"), Some("reminder"));
    assert_eq!(
        get.header("x-auth-peer"),
        Some("spiffe://cluster.local/ns/default/sa/reminder")
    );
    assert!(
        steps[1].todos_saw.is_none(),
        "the denied POST must not reach the app"
    );
    assert!(
        steps[2].todos_saw.is_none(),
        "reminder's app must not see todos"
    );
    let bob = steps[3].todos_saw.as_ref().expect("todos saw share's call");
    assert_eq!(bob.header("x-auth-subject"), Some("bob"));
    assert_eq!(bob.header("x-auth-actor"), Some("share"));
    assert_eq!(
        bob.header("x-auth-peer"),
        Some("spiffe://cluster.local/ns/default/sa/share")
    );
    assert!(steps[4].todos_saw.is_none());
}
