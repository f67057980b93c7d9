//! DynamoDB: the `rows` table (row store) and the `state` table (claims and typed records).

mod rows;
mod state;

pub use rows::{
    DEFAULT_CONCURRENCY, DynamoRowStore, GET_BATCH, MAX_ITEM_BYTES, RequestCounts, WRITE_BATCH,
    partition_key, write_all,
};
pub use state::DynamoState;

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn str_attr(item: &HashMap<String, AttributeValue>, name: &str) -> Option<String> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    }
}
