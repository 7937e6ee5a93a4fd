//! The server's side of the management API: one route per CLI verb.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

use super::{
    ApiError, ChangePv, ChangeVg, CreateLv, CreatePv, CreateVg, ErrorBody, ExtendLv, LvName,
    MovePv, RemoveMissing, RemovePv, RemoveVg, ServerStatus, SetFaultPolicy, SetRecoveryRate,
    SyncAction,
};
use crate::serve::Server;

type Shared = State<Arc<Server>>;

pub fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/reports", get(reports))
        .route("/v1/pvcreate", post(pvcreate))
        .route("/v1/pvremove", post(pvremove))
        .route("/v1/pvchange", post(pvchange))
        .route("/v1/pvmove", post(pvmove))
        .route("/v1/vgcreate", post(vgcreate))
        .route("/v1/vgextend", post(vgextend))
        .route("/v1/vgreduce", post(vgreduce))
        .route("/v1/vgreduce-removemissing", post(vgreduce_removemissing))
        .route("/v1/vgchange", post(vgchange))
        .route("/v1/vgremove", post(vgremove))
        .route("/v1/lvcreate", post(lvcreate))
        .route("/v1/lvextend", post(lvextend))
        .route("/v1/lvremove", post(lvremove))
        .route("/v1/lvconvert-repair", post(lvconvert_repair))
        .route("/v1/lvchange-syncaction", post(lvchange_syncaction))
        .route("/v1/lvchange-recovery-rate", post(lvchange_recovery_rate))
        .route("/v1/jobs", get(jobs))
        .route("/v1/jobs/{id}", get(job))
        .route("/metrics", get(metrics))
        .with_state(server)
}

/// Only `/metrics`, for `bv serve --metrics-listen`: scraping over TCP
/// without opening the management API.
pub fn metrics_router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(server)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status(), Json(ErrorBody { error: self })).into_response()
    }
}

fn reply<T: Serialize>(result: Result<T, ApiError>) -> Response {
    match result {
        Ok(value) => Json(value).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn status(State(server): Shared) -> Response {
    reply(Ok(ServerStatus {
        version: env!("CARGO_PKG_VERSION").to_string(),
        nbd_address: server.nbd_address().to_string(),
        data_dir: server.data_dir().to_path_buf(),
    }))
}

async fn reports(State(server): Shared) -> Response {
    reply(Ok(server.reports().await))
}

async fn pvcreate(State(server): Shared, Json(request): Json<CreatePv>) -> Response {
    reply(server.create_pv(request).await)
}

async fn pvremove(State(server): Shared, Json(request): Json<RemovePv>) -> Response {
    reply(server.remove_pv(&request.path).await)
}

async fn pvchange(State(server): Shared, Json(request): Json<ChangePv>) -> Response {
    reply(
        server
            .change_pv(request)
            .await
            .map(|mode| serde_json::json!({ "fault": mode.to_string() })),
    )
}

async fn pvmove(State(server): Shared, Json(request): Json<MovePv>) -> Response {
    reply(server.start_move(&request.path))
}

async fn vgcreate(State(server): Shared, Json(request): Json<CreateVg>) -> Response {
    reply(server.create_vg(request).await)
}

async fn vgextend(State(server): Shared, Json(request): Json<ChangeVg>) -> Response {
    reply(server.extend_vg(request).await)
}

async fn vgreduce(State(server): Shared, Json(request): Json<ChangeVg>) -> Response {
    reply(server.reduce_vg(request).await)
}

async fn vgreduce_removemissing(
    State(server): Shared,
    Json(request): Json<RemoveMissing>,
) -> Response {
    reply(server.remove_missing(request).await)
}

async fn vgchange(State(server): Shared, Json(request): Json<SetFaultPolicy>) -> Response {
    reply(server.set_fault_policy(request).await)
}

async fn vgremove(State(server): Shared, Json(request): Json<RemoveVg>) -> Response {
    reply(server.remove_vg(request).await)
}

async fn lvcreate(State(server): Shared, Json(request): Json<CreateLv>) -> Response {
    reply(server.create_lv(request).await)
}

async fn lvextend(State(server): Shared, Json(request): Json<ExtendLv>) -> Response {
    reply(server.extend_lv(request).await)
}

async fn lvremove(State(server): Shared, Json(request): Json<LvName>) -> Response {
    reply(server.remove_lv(request).await)
}

async fn lvconvert_repair(State(server): Shared, Json(request): Json<LvName>) -> Response {
    reply(server.start_recover(&request.vg, &request.name))
}

async fn lvchange_syncaction(State(server): Shared, Json(request): Json<SyncAction>) -> Response {
    reply(server.start_scrub(&request.vg, &request.name, request.repair))
}

async fn lvchange_recovery_rate(
    State(server): Shared,
    Json(request): Json<SetRecoveryRate>,
) -> Response {
    reply(server.set_recovery_rate(request).await)
}

async fn metrics(State(server): Shared) -> Response {
    match server.metrics_text().await {
        Ok(text) => ([(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn jobs(State(server): Shared) -> Response {
    reply(Ok(server.jobs().list()))
}

async fn job(State(server): Shared, Path(id): Path<u64>) -> Response {
    reply(
        server
            .jobs()
            .get(id)
            .ok_or_else(|| ApiError::new("not_found", format!("no job {id}"))),
    )
}
