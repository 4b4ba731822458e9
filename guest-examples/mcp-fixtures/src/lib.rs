//! The MCP conformance suite's fixture tools.

wit_bindgen::generate!({
    world: "example:mcp-fixtures/mcp-fixtures",
    path: ["../../wit", "wit"],
    generate_all,
});

use toolhost::tool::content::{EmbeddedResource, Media, ResourceLink};
use toolhost::tool::log::{Level, emit};
use toolhost::tool::progress::report;

struct Fixtures;

/// A 1x1 red PNG.
const RED_PIXEL_PNG: &[u8] = &[
    137, 80, 78, 71, 13, 10, 26, 10, 0, 0, 0, 13, 73, 72, 68, 82, 0, 0, 0, 1, 0, 0, 0, 1, 8, 2, 0,
    0, 0, 144, 119, 83, 222, 0, 0, 0, 12, 73, 68, 65, 84, 120, 156, 99, 248, 207, 192, 0, 0, 3, 1,
    1, 0, 201, 254, 146, 239, 0, 0, 0, 0, 73, 69, 78, 68, 174, 66, 96, 130,
];

/// Eight samples of 8 kHz mono 8-bit PCM, as WAV.
const TINY_WAV: &[u8] = &[
    82, 73, 70, 70, 44, 0, 0, 0, 87, 65, 86, 69, 102, 109, 116, 32, 16, 0, 0, 0, 1, 0, 1, 0, 64,
    31, 0, 0, 64, 31, 0, 0, 1, 0, 8, 0, 100, 97, 116, 97, 8, 0, 0, 0, 128, 160, 192, 160, 128, 96,
    64, 96,
];

fn image() -> ContentBlock {
    ContentBlock::Image(Media {
        data: RED_PIXEL_PNG.to_vec(),
        mime_type: "image/png".into(),
    })
}

impl Guest for Fixtures {
    fn test_simple_text() -> Vec<ContentBlock> {
        vec![ContentBlock::Text(
            "This is a simple text response for testing.".into(),
        )]
    }

    fn test_image_content() -> Vec<ContentBlock> {
        vec![image()]
    }

    fn test_audio_content() -> Vec<ContentBlock> {
        vec![ContentBlock::Audio(Media {
            data: TINY_WAV.to_vec(),
            mime_type: "audio/wav".into(),
        })]
    }

    fn test_embedded_resource() -> Vec<ContentBlock> {
        vec![ContentBlock::EmbeddedResource(EmbeddedResource {
            uri: "test://embedded-resource".into(),
            mime_type: Some("text/plain".into()),
            text: Some("This is an embedded resource content.".into()),
            blob: None,
        })]
    }

    fn test_multiple_content_types() -> Vec<ContentBlock> {
        vec![
            ContentBlock::Text("Multiple content types test:".into()),
            image(),
            ContentBlock::EmbeddedResource(EmbeddedResource {
                uri: "test://mixed-content-resource".into(),
                mime_type: Some("application/json".into()),
                text: Some(r#"{"test":"data","value":123}"#.into()),
                blob: None,
            }),
        ]
    }

    fn test_resource_link() -> Vec<ContentBlock> {
        vec![ContentBlock::ResourceLink(ResourceLink {
            uri: "test://linked-resource".into(),
            name: "linked-resource".into(),
            description: Some("A resource the client may fetch.".into()),
            mime_type: Some("text/plain".into()),
        })]
    }

    fn test_error_handling() -> Result<String, String> {
        Err("This tool intentionally returns an error for testing".into())
    }

    fn test_tool_with_logging() -> String {
        emit(Level::Info, "Tool execution started");
        emit(Level::Info, "Tool processing data");
        emit(Level::Info, "Tool execution completed");
        "Logging test completed".into()
    }

    fn test_tool_with_progress() -> String {
        for done in [0.0, 50.0, 100.0] {
            report(done, Some(100.0), None);
        }
        "Progress test completed".into()
    }
}

export!(Fixtures);
