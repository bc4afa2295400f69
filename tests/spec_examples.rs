//! The curl examples of the deployments API page (spec/deployments-api.md), run with the real
//! `curl` against the real binary, host and token swapped, and the answers' shapes checked
//! against the page's example objects and compat.md.
mod common;
#[path = "common/deploy.rs"]
mod deploy;

use serde_json::{json, Value};

use common::Server;
use deploy::deploy;

/// The spec page's host, replaced by the test server's URL.
const SPEC_HOST: &str = "https://api.scalingo.com";
/// The deployment id of the spec page's examples, replaced by a real one.
const SPEC_DEPLOYMENT_ID: &str = "123e4567-e89b-12d3-a456-426655440000";

// The examples, copied verbatim from spec/deployments-api.md.
const LIST_EXAMPLE: &str = r#"curl -H "Accept: application/json" -H "Content-Type: application/json" -u ":$AUTH_TOKEN" \
  -X GET https://api.scalingo.com/v1/apps/example-app/deployments"#;
const GET_EXAMPLE: &str = r#"curl -H "Accept: application/json" -H "Content-Type: application/json" -u ":$AUTH_TOKEN" \
  -X GET https://api.scalingo.com/v1/apps/example-app/deployments/123e4567-e89b-12d3-a456-426655440000"#;
const TRIGGER_EXAMPLE: &str = r#"curl -H "Accept: application/json" -H "Content-Type: application/json" -u ":$AUTH_TOKEN" \
     -X POST https://api.scalingo.com/v1/apps/example-app/deployments -d \
     '{
       "deployment": {
         "git_ref": "master",
         "source_url": "https://github.com/Scalingo/sample-go-martini/archive/master.tar.gz"
       }
     }'"#;
const OUTPUT_EXAMPLE: &str = r#"curl -H "Accept: text/plain" -u ":$AUTH_TOKEN" \
  -X GET https://api.scalingo.com/v1/apps/example-app/deployments/123e4567-e89b-12d3-a456-426655440000/output"#;

/// The example deployment object of the page (trigger answer: the fullest one).
fn example_deployment() -> Value {
    json!({
        "id": "5e34a76a-24b7-4d50-be96-942ca986a786",
        "created_at": "2016-12-16T16:33:58.250+01:00",
        "app_id": "529ba36e65d972e883203922",
        "finished_at": null,
        "status": "building",
        "git_ref": "master",
        "previous_git_ref": "eb5454c314e2e9c8f98efa9b4422476b391df185",
        "duration": 0,
        "pusher": {"username": "user", "email": "user@example.com", "id": "51161e5ef1e42617000001"},
        "links": {"output": "https://api.scalingo.com/v1/apps/529ba36e65d972e883203922/deployments/5e34a76a-24b7-4d50-be96-942ca986a786/output"}
    })
}

struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

/// Runs a spec example through `sh` (as a reader would paste it), host, id and token swapped;
/// only `-s -o FILE -w …` is added so the test can read the status and content type.
fn run_example(server: &Server, example: &str, deployment_id: &str) -> Answer {
    let dir = tempfile::tempdir().expect("tempdir");
    let body_path = dir.path().join("body");
    let command = example
        .replace(SPEC_HOST, &server.url)
        .replace(SPEC_DEPLOYMENT_ID, deployment_id)
        .replacen(
            "curl ",
            &format!(
                "curl -s -o '{}' -w '%{{http_code}} %{{content_type}}' ",
                body_path.display()
            ),
            1,
        );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .env("AUTH_TOKEN", &server.admin_token)
        .output()
        .expect("run curl");
    assert!(out.status.success(), "{command}: {out:?}");
    let written = String::from_utf8(out.stdout).expect("utf-8");
    let (status, content_type) = written.split_once(' ').expect("status and type");
    Answer {
        status: status.parse().expect("status"),
        content_type: content_type.to_string(),
        body: std::fs::read_to_string(&body_path).unwrap_or_default(),
    }
}

fn json_body(answer: &Answer) -> Value {
    assert!(
        answer.content_type.starts_with("application/json"),
        "{}",
        answer.content_type
    );
    serde_json::from_str(&answer.body).unwrap_or_else(|_| panic!("non-JSON: {}", answer.body))
}

/// Fields compat.md allows to be null although the example shows a string.
const NULLABLE: &[&str] = &["previous_git_ref", "finished_at"];

/// Every field of `example` is in `actual` with the same JSON type (recursively for objects).
fn assert_shape(example: &Value, actual: &Value, path: &str) {
    match (example, actual) {
        (Value::Object(fields), Value::Object(got)) => {
            for (key, value) in fields {
                let inner = format!("{path}.{key}");
                let got = got
                    .get(key)
                    .unwrap_or_else(|| panic!("{inner} missing in {actual}"));
                if (got.is_null() || value.is_null()) && NULLABLE.contains(&key.as_str()) {
                    continue;
                }
                assert_shape(value, got, &inner);
            }
        }
        (Value::String(_), Value::String(_)) | (Value::Bool(_), Value::Bool(_)) => {}
        (Value::Number(_), Value::Number(n)) => {
            assert!(n.is_i64() || n.is_u64(), "{path} must be an integer: {n}")
        }
        (Value::Array(_), Value::Array(_)) => {}
        _ => panic!("{path}: expected the type of {example}, got {actual}"),
    }
}

/// compat.md's rules for every deployment object.
fn assert_compat_deployment(d: &Value, server: &Server) {
    let created = d["created_at"].as_str().expect("created_at string");
    time::OffsetDateTime::parse(created, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("created_at {created:?}: {e}"));
    for field in ["id", "username", "email"] {
        assert!(d["pusher"][field].is_string(), "pusher.{field}: {d}");
    }
    let output = d["links"]["output"].as_str().expect("links.output");
    assert!(
        output.starts_with(&server.url) && output.contains("/v1/"),
        "{output}"
    );
    assert!(d["duration"].is_u64() || d["duration"].is_i64(), "{d}");
    assert!(d["image_size"].is_u64(), "{d}");
    assert!(d["status"].is_string() && d["git_ref"].is_string(), "{d}");
}

#[tokio::test]
async fn the_spec_examples_answer_with_the_documented_shapes() {
    let server = Server::start();
    let admin = server.admin();
    server.create_app(&admin, "example-app").await;
    let id = deploy(
        &server,
        "example-app",
        &server.admin_token,
        &[
            "-----> Buildpack version 1.2.0",
            "       Bundle completed (2.64s)",
        ],
        "build-error",
    )
    .await;

    // List.
    let answer = run_example(&server, LIST_EXAMPLE, &id);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let list = json_body(&answer);
    let example_list = json!({
        "deployments": [],
        "meta": {"pagination": {"current_page": 1, "total_pages": 1, "total_count": 1}}
    });
    assert_shape(&example_list, &list, "");
    assert_eq!(list["meta"]["pagination"]["prev_page"], Value::Null);
    assert_eq!(list["meta"]["pagination"]["next_page"], Value::Null);
    let first = &list["deployments"][0];
    assert_shape(&example_deployment(), first, "deployments[0]");
    assert_compat_deployment(first, &server);
    assert_eq!(first["id"], id.as_str());
    assert_eq!(first["status"], "build-error");

    // Get.
    let answer = run_example(&server, GET_EXAMPLE, &id);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let got = json_body(&answer);
    assert_eq!(got.as_object().expect("object").len(), 1, "{got}");
    assert_shape(&example_deployment(), &got["deployment"], "deployment");
    assert_compat_deployment(&got["deployment"], &server);
    assert_eq!(&got["deployment"], first);

    // Output: plain text, the stored lines.
    let answer = run_example(&server, OUTPUT_EXAMPLE, &id);
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer.content_type.starts_with("text/plain"),
        "{}",
        answer.content_type
    );
    assert_eq!(
        answer.body,
        "-----> Buildpack version 1.2.0\n       Bundle completed (2.64s)\n"
    );
    // The output example with an unknown id: a JSON 404.
    let answer = run_example(&server, OUTPUT_EXAMPLE, SPEC_DEPLOYMENT_ID);
    assert_eq!(answer.status, 404, "{}", answer.body);
    assert_eq!(
        json_body(&answer),
        json!({"resource": "deployment", "error": "not found"})
    );
}

#[tokio::test]
async fn the_trigger_example_answers_201_or_a_json_422_without_a_source() {
    // The example's source is on github.com: keep the executor's fetch short either way.
    let server = Server::start_with(common::Options {
        config_toml: "fetch_timeout_secs = 2\n".into(),
        ..common::Options::default()
    });
    let admin = server.admin();
    server.create_app(&admin, "example-app").await;
    // The trigger itself (the built-in executor) belongs to another suite: only the answer's
    // code and shape are checked here.
    let answer = run_example(&server, TRIGGER_EXAMPLE, SPEC_DEPLOYMENT_ID);
    assert_eq!(answer.status, 201, "{}", answer.body);
    let created = json_body(&answer);
    assert_shape(&example_deployment(), &created["deployment"], "deployment");
    assert_compat_deployment(&created["deployment"], &server);
    assert_eq!(created["deployment"]["git_ref"], "master");

    // Without source_url, on an app without git_source: a JSON 422 naming source_url.
    let without = TRIGGER_EXAMPLE.replace(
        r#",
         "source_url": "https://github.com/Scalingo/sample-go-martini/archive/master.tar.gz""#,
        "",
    );
    assert_ne!(without, TRIGGER_EXAMPLE);
    server.create_app(&admin, "no-source").await;
    let without = without.replace("/example-app/", "/no-source/");
    let answer = run_example(&server, &without, SPEC_DEPLOYMENT_ID);
    assert_eq!(answer.status, 422, "{}", answer.body);
    let body = json_body(&answer);
    assert!(body["errors"]["source_url"].is_array(), "{body}");
    let (_, list) = admin.get("/v1/apps/no-source/deployments").await;
    assert_eq!(list["meta"]["pagination"]["total_count"], 0, "{list}");
}
