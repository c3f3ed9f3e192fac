//! The fake API's resources, shaped like JSONPlaceholder's.
//!
//! Everything is generated deterministically from the id, so two `FakeApi`s
//! always serve the same data and tests can assert exact values.

use serde_json::{json, Value};

/// Number of posts served (`/posts/1` to `/posts/100`), as JSONPlaceholder.
pub const POSTS: u64 = 100;
/// Number of users served (`/users/1` to `/users/10`).
pub const USERS: u64 = 10;
/// Comments per post; ids run from 1 to `POSTS * COMMENTS_PER_POST`.
pub const COMMENTS_PER_POST: u64 = 5;
/// Ids with a record at the batch endpoint `/metadata?id=..` (1 to this).
pub const METADATA_IDS: u64 = 1000;
/// The id JSONPlaceholder gives to every created post.
pub const NEW_POST_ID: u64 = POSTS + 1;

const WORDS: &[&str] = &[
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipisci",
    "velit",
    "quia",
    "non",
    "numquam",
    "eius",
    "modi",
    "tempora",
    "incidunt",
    "ut",
    "labore",
    "et",
    "magnam",
    "aliquam",
    "quaerat",
    "voluptatem",
    "enim",
    "minima",
    "veniam",
    "nostrum",
    "exercitationem",
    "ullam",
];

fn words(seed: u64, n: u64) -> String {
    let mut out = String::new();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if i > 0 {
            out.push(' ');
        }
        // The modulo keeps the index in range, so the cast cannot truncate.
        out.push_str(WORDS[(x % WORDS.len() as u64) as usize]);
    }
    out
}

/// The post with this id, if it exists.
pub fn post(id: u64) -> Option<Value> {
    if !(1..=POSTS).contains(&id) {
        return None;
    }
    let title = if id == 1 {
        "sunt aut facere repellat provident occaecati excepturi optio reprehenderit".to_owned()
    } else {
        words(id, 6)
    };
    Some(json!({
        "userId": (id - 1) / 10 + 1,
        "id": id,
        "title": title,
        "body": words(id + 1000, 24),
    }))
}

/// The user with this id, if it exists.
pub fn user(id: u64) -> Option<Value> {
    if !(1..=USERS).contains(&id) {
        return None;
    }
    let name = words(id + 2000, 2);
    let username = format!("user{id}");
    Some(json!({
        "id": id,
        "name": name,
        "username": username,
        "email": format!("{username}@example.test"),
    }))
}

/// The comment with this id, if it exists.
pub fn comment(id: u64) -> Option<Value> {
    if !(1..=POSTS * COMMENTS_PER_POST).contains(&id) {
        return None;
    }
    Some(json!({
        "postId": (id - 1) / COMMENTS_PER_POST + 1,
        "id": id,
        "name": words(id + 3000, 4),
        "email": format!("commenter{id}@example.test"),
        "body": words(id + 4000, 16),
    }))
}

/// The metadata record of one id at the batch endpoint, if it exists.
pub fn metadata(id: u64) -> Option<Value> {
    if !(1..=METADATA_IDS).contains(&id) {
        return None;
    }
    Some(json!({
        "id": id,
        "name": format!("item-{id}"),
        "size": id * 37 % 1009,
    }))
}

/// All posts, optionally only those of one user.
pub fn posts(user_id: Option<u64>) -> Value {
    Value::Array(
        (1..=POSTS)
            .filter_map(post)
            .filter(|p| user_id.is_none_or(|u| p["userId"] == u))
            .collect(),
    )
}

/// All users.
pub fn users() -> Value {
    Value::Array((1..=USERS).filter_map(user).collect())
}

/// All comments, optionally only those of one post.
pub fn comments(post_id: Option<u64>) -> Value {
    let range = match post_id {
        Some(p) if (1..=POSTS).contains(&p) => {
            (p - 1) * COMMENTS_PER_POST + 1..=p * COMMENTS_PER_POST
        }
        Some(_) => return Value::Array(Vec::new()),
        None => 1..=POSTS * COMMENTS_PER_POST,
    };
    Value::Array(range.filter_map(comment).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_one_has_jsonplaceholders_title_and_first_user() {
        let p = post(1).expect("post 1 exists");
        assert_eq!(p["userId"], 1);
        assert!(p["title"]
            .as_str()
            .is_some_and(|t| t.starts_with("sunt aut facere")));
        assert_eq!(post(11).expect("post 11")["userId"], 2);
    }

    #[test]
    fn ids_outside_the_ranges_have_no_record() {
        assert!(post(0).is_none() && post(POSTS + 1).is_none());
        assert!(user(USERS + 1).is_none());
        assert!(comment(0).is_none());
        assert!(metadata(METADATA_IDS + 1).is_none());
    }

    #[test]
    fn filters_select_by_owner() {
        assert_eq!(posts(None).as_array().map(Vec::len), Some(100));
        assert_eq!(posts(Some(3)).as_array().map(Vec::len), Some(10));
        let c = comments(Some(2));
        let c = c.as_array().expect("array");
        assert_eq!(c.len(), 5);
        assert!(c.iter().all(|c| c["postId"] == 2));
        assert_eq!(comments(Some(999)).as_array().map(Vec::len), Some(0));
    }

    #[test]
    fn generation_is_deterministic() {
        assert_eq!(post(42), post(42));
        assert_ne!(post(42), post(43));
    }
}
