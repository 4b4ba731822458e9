//! Pure-compute text tools.

wit_bindgen::generate!({
    world: "example:text-tools/text-tools",
    path: ["../../wit", "wit"],
    generate_all,
});

use std::collections::HashMap;

struct TextTools;

impl Guest for TextTools {
    fn hello(name: String) -> String {
        format!("Hello, {name}!")
    }

    fn word_count(text: String) -> Stats {
        Stats {
            words: text.split_whitespace().count() as u32,
            lines: text.lines().count() as u32,
            chars: text.chars().count() as u32,
            bytes: text.len() as u32,
        }
    }

    fn slugify(text: String) -> String {
        text.split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(|w| w.to_ascii_lowercase())
            .collect::<Vec<_>>()
            .join("-")
    }

    fn top_words(text: String, n: u32) -> Vec<(String, u32)> {
        let mut counts: HashMap<String, u32> = HashMap::new();
        for word in text
            .split(|c: char| !c.is_alphanumeric() && c != '\'')
            .filter(|w| !w.is_empty())
        {
            *counts.entry(word.to_lowercase()).or_default() += 1;
        }
        let mut all: Vec<(String, u32)> = counts.into_iter().collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n as usize);
        all
    }
}

export!(TextTools);
