//! `catalog`: products and search over gRPC (tonic), served by axum on one port together with
//! `/metrics` and `/stats`.

use axum::Router;
use synth_ctx::Verifier;
use tonic::{Request, Response, Status};

use crate::{
    common::ServiceBase,
    proto::{
        GetProductRequest, Product, SearchReply, SearchRequest,
        catalog_server::{Catalog, CatalogServer},
    },
};

/// How many products the catalogue has (ids `1..=PRODUCTS`, SKUs `sku-1`…).
pub const PRODUCTS: u32 = 100;

const COLOURS: [&str; 10] =
    ["red", "blue", "green", "black", "white", "grey", "yellow", "pink", "navy", "tan"];
const THINGS: [&str; 10] =
    ["shoes", "hats", "bags", "socks", "scarves", "gloves", "belts", "shirts", "coats", "boots"];

/// Product `id`, if it exists.
pub fn product(id: u32) -> Option<Product> {
    if !(1..=PRODUCTS).contains(&id) {
        return None;
    }
    let i = (id - 1) as usize;
    Some(Product {
        id,
        sku: format!("sku-{id}"),
        name: format!("{} {}", COLOURS[i / 10], THINGS[i % 10]),
        price_cents: 500 + u64::from(id) * 125,
    })
}

/// The product id of a SKU (`sku-7` → 7).
pub fn id_of_sku(sku: &str) -> Option<u32> {
    sku.strip_prefix("sku-")?.parse().ok()
}

#[derive(Debug)]
struct CatalogService;

#[tonic::async_trait]
impl Catalog for CatalogService {
    async fn get_product(&self, request: Request<GetProductRequest>) -> Result<Response<Product>, Status> {
        let id = request.get_ref().id;
        product(id).map(Response::new).ok_or_else(|| Status::not_found(format!("no product {id}")))
    }

    async fn search(&self, request: Request<SearchRequest>) -> Result<Response<SearchReply>, Status> {
        let query = request.get_ref().query.trim().to_lowercase();
        let limit = match request.get_ref().limit {
            0 => 20,
            n => n.min(100),
        } as usize;
        let products =
            (1..=PRODUCTS).filter_map(product).filter(|p| p.name.contains(&query)).take(limit).collect();
        Ok(Response::new(SearchReply { products }))
    }
}

/// The catalogue service: gRPC behind the synth layer, plus `/metrics` and `/stats`.
pub fn router(verifier: Verifier) -> (Router, ServiceBase) {
    let base = ServiceBase::new("catalog", verifier);
    let grpc = tonic::service::Routes::new(CatalogServer::new(CatalogService))
        .prepare()
        .into_axum_router()
        .layer(base.metered())
        .layer(base.server_layer());
    let app = grpc.merge(base.observability(|| serde_json::json!({ "products": PRODUCTS })));
    (app, base)
}
