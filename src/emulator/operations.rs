//! One operation, start to finish: validated input -> store -> output shape. No HTTP here.

use serde_json::{Value, json};

use super::error::ApiError;
use super::store::{Millis, Store};
use super::validate::{self, Object};
use super::wire::{self, Operation};

/// Runs `op` in `region`, the region the request is served in.
pub fn execute(
    store: &mut Store,
    region: &str,
    op: Operation,
    body: &Object,
    now: Millis,
) -> Result<Value, ApiError> {
    match op {
        Operation::Create => {
            let req = validate::create_input(body)?;
            Ok(wire::connection_output(&store.create(region, req, now)?))
        }
        Operation::Get => {
            let id = validate::id_input(body)?;
            Ok(wire::connection_output(&store.get(region, &id)?))
        }
        Operation::Update => {
            let req = validate::update_input(body)?;
            Ok(wire::connection_output(&store.update(region, req, now)?))
        }
        Operation::Delete => {
            let id = validate::id_input(body)?;
            Ok(wire::connection_output(&store.delete(region, &id, now)?))
        }
        Operation::Accept => {
            let id = validate::id_input(body)?;
            Ok(wire::connection_output(&store.accept(region, &id, now)?))
        }
        Operation::Reject => {
            let id = validate::id_input(body)?;
            Ok(wire::connection_output(&store.reject(region, &id, now)?))
        }
        Operation::List => {
            let req = validate::list_input(body)?;
            let page = store.list(region, &req, now)?;
            let mut output = json!({
                "environmentAccountConnections":
                    page.items.iter().map(wire::summary).collect::<Vec<_>>(),
            });
            if let Some(token) = page.next_token {
                output["nextToken"] = json!(token);
            }
            Ok(output)
        }
        Operation::TagResource => {
            let (arn, tags) = validate::tag_input(body)?;
            store.tag(region, &arn, tags)?;
            Ok(json!({}))
        }
        Operation::UntagResource => {
            let (arn, keys) = validate::untag_input(body)?;
            store.untag(region, &arn, &keys)?;
            Ok(json!({}))
        }
        Operation::ListTagsForResource => {
            let req = validate::list_tags_input(body)?;
            let page = store.list_tags(region, &req)?;
            let tags: Vec<Value> = page
                .items
                .iter()
                .map(|(key, value)| json!({"key": key, "value": value}))
                .collect();
            let mut output = json!({ "tags": tags });
            if let Some(token) = page.next_token {
                output["nextToken"] = json!(token);
            }
            Ok(output)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::error::ErrorKind;
    use super::*;

    fn run(store: &mut Store, op: Operation, body: Value) -> Result<Value, ApiError> {
        run_in(store, "eu-west-1", op, body)
    }

    fn run_in(
        store: &mut Store,
        region: &str,
        op: Operation,
        body: Value,
    ) -> Result<Value, ApiError> {
        let Value::Object(body) = body else {
            panic!("body must be an object")
        };
        execute(store, region, op, &body, 1_000)
    }

    #[test]
    fn create_then_list_tags_and_list() {
        let mut store = Store::new("444455556666", None);
        let created = run(
            &mut store,
            Operation::Create,
            json!({
                "environmentName": "prod",
                "managementAccountId": "111122223333",
                "codebuildRoleArn": "arn:aws:iam::444455556666:role/cb",
                "tags": [{"key": "team", "value": "payments"}],
            }),
        )
        .unwrap();
        let connection = &created["environmentAccountConnection"];
        assert_eq!(connection["status"], "PENDING");
        assert_eq!(connection["environmentAccountId"], "444455556666");
        let arn = connection["arn"].as_str().unwrap();
        assert!(
            arn.starts_with(
                "arn:aws:proton:eu-west-1:444455556666:environment-account-connection/"
            )
        );

        let tags = run(
            &mut store,
            Operation::ListTagsForResource,
            json!({"resourceArn": arn}),
        )
        .unwrap();
        assert_eq!(
            tags,
            json!({"tags": [{"key": "team", "value": "payments"}]})
        );

        let listed = run(
            &mut store,
            Operation::List,
            json!({"requestedBy": "ENVIRONMENT_ACCOUNT"}),
        )
        .unwrap();
        let summaries = listed["environmentAccountConnections"].as_array().unwrap();
        assert_eq!(summaries.len(), 1);
        assert!(summaries[0].get("codebuildRoleArn").is_none());
        assert!(listed.get("nextToken").is_none());
    }

    #[test]
    fn validation_happens_before_lookup() {
        let mut store = Store::new("444455556666", None);
        let err = run(&mut store, Operation::Get, json!({"id": "nope"})).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Validation);
        let err = run(
            &mut store,
            Operation::Get,
            json!({"id": "00000000-0000-4000-8000-000000000000"}),
        )
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::ResourceNotFound);
    }

    #[test]
    fn the_request_s_region_scopes_every_operation() {
        let mut store = Store::new("444455556666", None);
        let created = run_in(
            &mut store,
            "ap-south-1",
            Operation::Create,
            json!({"environmentName": "prod", "managementAccountId": "111122223333"}),
        )
        .unwrap();
        let connection = &created["environmentAccountConnection"];
        let arn = connection["arn"].as_str().unwrap();
        assert!(arn.starts_with("arn:aws:proton:ap-south-1:"), "{arn}");
        let id = connection["id"].clone();
        let in_ap = run_in(&mut store, "ap-south-1", Operation::Get, json!({"id": id}));
        assert_eq!(in_ap.unwrap(), created);
        let elsewhere = run(&mut store, Operation::Get, json!({"id": id})).unwrap_err();
        assert_eq!(elsewhere.kind, ErrorKind::ResourceNotFound);
        let listed = run(
            &mut store,
            Operation::List,
            json!({"requestedBy": "ENVIRONMENT_ACCOUNT"}),
        )
        .unwrap();
        assert_eq!(listed, json!({"environmentAccountConnections": []}));
    }
}
