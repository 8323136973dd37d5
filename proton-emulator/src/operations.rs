//! One operation, start to finish: validated input -> the two-account rules -> store -> output
//! shape. No HTTP here.

use serde_json::{Value, json};

use super::access::{Named, Requester};
use super::error::ApiError;
use super::store::{Millis, Store};
use super::validate::{self, Object};
use super::wire::{self, Operation};

/// Runs `op` for `requester` in `region`, the region the request is served in.
pub fn execute(
    store: &mut Store,
    requester: &Requester<'_>,
    region: &str,
    op: Operation,
    body: &Object,
    now: Millis,
) -> Result<Value, ApiError> {
    // Validation comes first, as in AWS: a malformed request is refused before anything is
    // looked up, so it cannot tell whether a connection exists.
    let by_id = |store: &Store, id: &str| -> Result<(), ApiError> {
        requester.check(op, store.find(region, id)?, Named::Id(id))
    };
    let by_arn = |store: &Store, arn: &str| -> Result<(), ApiError> {
        requester.check(op, store.connection_by_arn(region, arn)?, Named::Arn(arn))
    };
    match op {
        Operation::Create => {
            let req = validate::create_input(body)?;
            let created = store.create(region, requester.account(), req, now)?;
            Ok(wire::connection_output(&created))
        }
        Operation::Get => {
            let id = validate::id_input(body)?;
            by_id(store, &id)?;
            Ok(wire::connection_output(&store.get(region, &id)?))
        }
        Operation::Update => {
            let req = validate::update_input(body)?;
            by_id(store, &req.id)?;
            Ok(wire::connection_output(&store.update(region, req, now)?))
        }
        Operation::Delete => {
            let id = validate::id_input(body)?;
            by_id(store, &id)?;
            Ok(wire::connection_output(&store.delete(region, &id, now)?))
        }
        Operation::Accept => {
            let id = validate::id_input(body)?;
            by_id(store, &id)?;
            Ok(wire::connection_output(&store.accept(region, &id, now)?))
        }
        Operation::Reject => {
            let id = validate::id_input(body)?;
            by_id(store, &id)?;
            Ok(wire::connection_output(&store.reject(region, &id, now)?))
        }
        Operation::List => {
            let req = validate::list_input(body)?;
            let page = store.list(region, &req, now, |c| requester.lists(req.requested_by, c))?;
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
            by_arn(store, &arn)?;
            store.tag(region, &arn, tags)?;
            Ok(json!({}))
        }
        Operation::UntagResource => {
            let (arn, keys) = validate::untag_input(body)?;
            by_arn(store, &arn)?;
            store.untag(region, &arn, &keys)?;
            Ok(json!({}))
        }
        Operation::ListTagsForResource => {
            let req = validate::list_tags_input(body)?;
            by_arn(store, &req.resource_arn)?;
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
    use std::collections::BTreeMap;

    use super::super::caller::Identities;
    use super::super::error::ErrorKind;
    use super::*;

    const ENV: &str = "444455556666";
    const MGMT: &str = "111122223333";

    fn run(store: &mut Store, op: Operation, body: Value) -> Result<Value, ApiError> {
        run_in(store, "eu-west-1", op, body)
    }

    fn run_in(
        store: &mut Store,
        region: &str,
        op: Operation,
        body: Value,
    ) -> Result<Value, ApiError> {
        run_as(store, ENV, region, op, body)
    }

    /// Runs `op` as `account`, with a key known for the management account.
    fn run_as(
        store: &mut Store,
        account: &str,
        region: &str,
        op: Operation,
        body: Value,
    ) -> Result<Value, ApiError> {
        let Value::Object(body) = body else {
            panic!("body must be an object")
        };
        let keys = BTreeMap::from([("AKIDMGMT".to_string(), MGMT.to_string())]);
        let identities = Identities::new(ENV, &keys, []);
        let requester = Requester::new(account, &identities);
        execute(store, &requester, region, op, &body, 1_000)
    }

    #[test]
    fn create_then_list_tags_and_list() {
        let mut store = Store::new(None);
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
        let mut store = Store::new(None);
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
        let mut store = Store::new(None);
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

    #[test]
    fn the_two_account_rules_apply_to_every_operation() {
        let mut store = Store::new(None);
        let created = run(
            &mut store,
            Operation::Create,
            json!({"environmentName": "prod", "managementAccountId": MGMT}),
        )
        .unwrap();
        let id = created["environmentAccountConnection"]["id"].clone();
        let arn = created["environmentAccountConnection"]["arn"].clone();
        let as_mgmt = |store: &mut Store, op, body| run_as(store, MGMT, "eu-west-1", op, body);

        let err = run(&mut store, Operation::Accept, json!({"id": id})).unwrap_err();
        assert_eq!(err.kind, ErrorKind::AccessDenied);
        let err = as_mgmt(&mut store, Operation::Delete, json!({"id": id})).unwrap_err();
        assert_eq!(err.kind, ErrorKind::AccessDenied);
        let err = as_mgmt(
            &mut store,
            Operation::TagResource,
            json!({"resourceArn": arn, "tags": [{"key": "k", "value": "v"}]}),
        )
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::AccessDenied);
        as_mgmt(
            &mut store,
            Operation::ListTagsForResource,
            json!({"resourceArn": arn}),
        )
        .unwrap();

        let accepted = as_mgmt(&mut store, Operation::Accept, json!({"id": id})).unwrap();
        assert_eq!(
            accepted["environmentAccountConnection"]["status"],
            "CONNECTED"
        );
        let listed = |store: &mut Store, account: &str, side: &str| {
            run_as(
                store,
                account,
                "eu-west-1",
                Operation::List,
                json!({"requestedBy": side}),
            )
            .unwrap()["environmentAccountConnections"]
                .as_array()
                .unwrap()
                .len()
        };
        assert_eq!(listed(&mut store, MGMT, "MANAGEMENT_ACCOUNT"), 1);
        assert_eq!(listed(&mut store, MGMT, "ENVIRONMENT_ACCOUNT"), 0);
        assert_eq!(listed(&mut store, ENV, "ENVIRONMENT_ACCOUNT"), 1);
        assert_eq!(listed(&mut store, ENV, "MANAGEMENT_ACCOUNT"), 0);

        let stranger = run_as(
            &mut store,
            "999988887777",
            "eu-west-1",
            Operation::Get,
            json!({"id": id}),
        )
        .unwrap_err();
        assert_eq!(stranger.kind, ErrorKind::ResourceNotFound);
    }

    #[test]
    fn a_connection_belongs_to_the_account_that_created_it() {
        let mut store = Store::new(None);
        let created = run_as(
            &mut store,
            "777788889999",
            "eu-west-1",
            Operation::Create,
            json!({"environmentName": "prod", "managementAccountId": MGMT}),
        )
        .unwrap();
        let connection = &created["environmentAccountConnection"];
        assert_eq!(connection["environmentAccountId"], "777788889999");
        assert!(
            connection["arn"]
                .as_str()
                .unwrap()
                .starts_with("arn:aws:proton:eu-west-1:777788889999:"),
            "{connection}"
        );
        // The default account is a stranger to it.
        let err = run(&mut store, Operation::Get, json!({"id": connection["id"]})).unwrap_err();
        assert_eq!(err.kind, ErrorKind::ResourceNotFound);
    }
}
