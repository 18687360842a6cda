//! The OpenAPI 3.1 description of what a node serves over HTTP: its own endpoints and the
//! REST gateway, with every message type a client may send. Served at `GET /openapi.json`;
//! `docs/openapi.json` is this document, checked against it by a test.

use valkyrie_protocol::MessageType;

use crate::rest;

/// The document, as pretty-printed JSON text.
pub fn document() -> String {
    let types: Vec<String> = MessageType::ALL
        .iter()
        .copied()
        .filter(|t| rest::is_request_type(*t))
        .map(rest::type_name)
        .collect();
    let raw: Vec<String> = MessageType::ALL
        .iter()
        .copied()
        .filter(|t| rest::is_request_type(*t) && rest::is_raw(*t))
        .map(rest::type_name)
        .collect();
    let error = |description: &str| {
        serde_json::json!({
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        })
    };
    let probe = |summary: &str, description: &str, ok: &str, bad: &str| {
        serde_json::json!({"get": {
            "summary": summary,
            "description": description,
            "responses": {
                "200": {"description": ok, "content": {"application/json": {"schema": {"type": "object"}}}},
                "503": {"description": bad, "content": {"application/json": {"schema": {"type": "object"}}}},
                "401": error("The node requires credentials and its probes are not open (`--open-probes`).")
            }
        }})
    };
    let doc = serde_json::json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Valkyrie node",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "HTTP/1.1 on a Valkyrie node's own port: the node's probes and metrics, and the REST gateway that hands a JSON body to the node's service as a request frame of the named type. Binary clients connect to the same port."
        },
        "paths": {
            "/healthz": probe(
                "Liveness",
                "Every shard is alive: asleep waiting for work, or its loop turned within the last second.",
                "Alive; `shards` says each shard's state.",
                "A shard is stuck."
            ),
            "/readyz": probe(
                "Readiness",
                "The node takes new connections: started, not draining, under its connection limit.",
                "Ready.",
                "Draining, starting or full."
            ),
            "/ws": {"get": {
                "summary": "WebSocket (RFC 6455) carrying a Valkyrie connection",
                "description": "Binary messages carry the same bytes as a TCP connection (HELLO first; a message may hold whole frames or part of one). Text messages are closed with 1003, messages past max_frame + 24 bytes with 1009, protocol errors with 1002. The subprotocol `valkyrie.v2` is selected when offered.",
                "parameters": [
                    {"name": "Upgrade", "in": "header", "required": true, "schema": {"const": "websocket"}},
                    {"name": "Sec-WebSocket-Version", "in": "header", "required": true, "schema": {"const": "13"}},
                    {"name": "Sec-WebSocket-Key", "in": "header", "required": true, "schema": {"type": "string"}}
                ],
                "responses": {
                    "101": {"description": "Switching Protocols: the connection speaks WebSocket."},
                    "400": error("Not a WebSocket handshake (HTTP/1.1 with Upgrade and Connection: Upgrade, a 16-byte key)."),
                    "403": error("The Origin is not in the node's --allow-origin list."),
                    "426": error("A WebSocket version other than 13."),
                    "503": error("The node is draining.")
                }
            }},
            "/metrics": {"get": {
                "summary": "Prometheus metrics",
                "description": "Every shard's counters summed at scrape time, in the Prometheus text format.",
                "responses": {
                    "200": {"description": "The exposition.", "content": {"text/plain": {"schema": {"type": "string"}}}},
                    "401": error("The node requires credentials and its probes are not open.")
                }
            }},
            "/api/v1/status": {"get": {
                "summary": "Status feed",
                "description": "Connections, message and byte totals, errors sent by class, shard liveness and recent events (what the status page shows). With follow=1: NDJSON, one such document a second, for as long as the client reads.",
                "parameters": [{"name": "follow", "in": "query", "required": false,
                    "schema": {"type": "integer", "enum": [1]}}],
                "responses": {
                    "200": {"description": "The status.", "content": {
                        "application/json": {"schema": {"type": "object"}},
                        "application/x-ndjson": {"schema": {"type": "string"}}
                    }},
                    "401": error("The node requires credentials and its probes are not open."),
                    "503": error("The shard serves as many followers as it may.")
                }
            }},
            "/": {"get": {
                "summary": "The live status page",
                "responses": {"200": {"description": "One HTML page with its script; it reads /api/v1/status.", "content": {"text/html": {"schema": {"type": "string"}}}}}
            }},
            "/openapi.json": {"get": {
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.1.", "content": {"application/json": {"schema": {"type": "object"}}}}}
            }},
            "/api/v1/messages/{type}": {"post": {
                "summary": "Send a request message to the node's service",
                "description": format!(
                    "The JSON body becomes the MessagePack payload of a request frame of `type` (snake_case), handed to the node's service as a binary client's request would be; its answer comes back. Types with raw payloads ({}) take and give application/octet-stream.",
                    raw.join(", ")
                ),
                "parameters": [
                    {"name": "type", "in": "path", "required": true,
                     "schema": {"type": "string", "enum": types}},
                    {"name": "traceparent", "in": "header", "required": false,
                     "description": "W3C trace context: carried as the request frame's TRACE context; the answer's comes back in this header.",
                     "schema": {"type": "string"}},
                    {"name": "stream", "in": "query", "required": false,
                     "description": "The stream the request travels on (default 1).",
                     "schema": {"type": "integer", "minimum": 0, "maximum": 4294967295u64}}
                ],
                "requestBody": {"required": true, "content": {
                    "application/json": {"schema": {"type": "object", "description": "The payload of the message type, as docs/PROTOCOL.md defines it."}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                }},
                "responses": {
                    "200": {"description": "The service's answer.", "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Answer"}},
                        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                    }},
                    "400": error("Not JSON, the wrong shape for the type (104), or a type a client does not send (106)."),
                    "401": error("The node requires credentials."),
                    "403": error("A security code (7xx) answered the request."),
                    "404": error("No such message type (103)."),
                    "409": error("A stream code (3xx) answered the request."),
                    "422": error("A job code (4xx) answered the request."),
                    "502": error("A network code (6xx) answered the request, or the answer did not fit its type."),
                    "503": error("A system code (5xx; 504: no service) answered the request."),
                    "504": error("No answer within the gateway's timeout (601).")
                }
            }}
        },
        "components": {"schemas": {
            "Answer": {"type": "object", "required": ["type", "correlation_id", "payload"], "properties": {
                "type": {"type": "string", "description": "The answer's message type, snake_case."},
                "correlation_id": {"type": "integer"},
                "payload": {"type": "object"}
            }},
            "Error": {"type": "object", "required": ["code", "message"], "properties": {
                "code": {"type": "integer", "description": "The protocol's error code (docs/PROTOCOL.md)."},
                "message": {"type": "string"}
            }}
        }}
    });
    let mut text = serde_json::to_string_pretty(&doc).expect("the document is JSON");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_in_docs_is_this_one() {
        let dir = std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
        let path = format!("{dir}/../docs/openapi.json");
        let written = std::fs::read_to_string(&path).unwrap_or_default();
        let now = super::document();
        if written != now {
            // Regenerate with: VALKYRIE_WRITE_OPENAPI=1 cargo test -p valkyrie-bridge openapi
            if std::env::var_os("VALKYRIE_WRITE_OPENAPI").is_some() {
                std::fs::write(&path, &now).expect("docs/openapi.json is writable");
                return;
            }
            panic!(
                "docs/openapi.json is out of date: VALKYRIE_WRITE_OPENAPI=1 cargo test -p valkyrie-bridge openapi"
            );
        }
        let v: serde_json::Value = serde_json::from_str(&now).unwrap();
        assert_eq!(v["openapi"], "3.1.0");
        let types =
            &v["paths"]["/api/v1/messages/{type}"]["post"]["parameters"][0]["schema"]["enum"];
        assert!(types.as_array().unwrap().iter().any(|t| t == "job_request"));
        assert!(!types.as_array().unwrap().iter().any(|t| t == "hello"));
    }
}
