//! The example shop's deterministic dataset.
//!
//! Every record is computed from its resource and index alone, so any page can
//! be served without holding the dataset in memory, and the same `orders` size
//! always gives the same data. Sizes, for `orders = N`:
//!
//! | resource  | rows                         | nested data                          |
//! |-----------|------------------------------|--------------------------------------|
//! | customers | max(1, N / 5)                | `address` object, `tags` list; `loyalty_tier` only in the second half |
//! | orders    | N                            | `shipping` object; `coupon` only in the last tenth |
//! | items     | 1 to 4 per order (≈ 2.5 N)   | `options` list                       |
//! | products  | 50 + N / 10,000              | `dimensions` object, `tags` list     |
//! | supplies  | 2 per product                | –                                    |
//! | stores    | 4 + N / 100,000              | `location` object                    |
//!
//! Two more resources give benchmarks the shapes real APIs send; they are not in
//! [`Resource::ALL`] (the quickstart's six) but in [`Resource::SHAPES`]:
//!
//! | resource  | rows      | shape |
//! |-----------|-----------|-------|
//! | events    | N         | 280–460 bytes: `actor` object holding an `org` object, `changes` list of 1–2 objects, `context` object, `tags` list |
//! | profiles  | max(1, N / 10) | wide and sparse: `id` plus 12–40 of 600 attributes (`attr_000`…`attr_599`), integers, doubles, strings, booleans, nested objects; `attr_007` turns from integer to string in the second half |

use serde::Serialize;

use crate::time::timestamp;

/// The six resources of the shop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    /// People who order.
    Customers,
    /// Orders, one customer and store each.
    Orders,
    /// Order lines.
    Items,
    /// The catalogue.
    Products,
    /// What products are made of.
    Supplies,
    /// Shops.
    Stores,
    /// Activity events with nested objects and lists of objects.
    Events,
    /// Wide, sparse records.
    Profiles,
}

impl Resource {
    /// All resources, in the order the quickstart syncs them.
    pub const ALL: [Resource; 6] = [
        Resource::Customers,
        Resource::Orders,
        Resource::Items,
        Resource::Products,
        Resource::Supplies,
        Resource::Stores,
    ];

    /// The benchmark shapes, served beside the six (not listed in the API's index).
    pub const SHAPES: [Resource; 2] = [Resource::Events, Resource::Profiles];

    /// The URL path segment and table name.
    pub fn name(self) -> &'static str {
        match self {
            Resource::Customers => "customers",
            Resource::Orders => "orders",
            Resource::Items => "items",
            Resource::Products => "products",
            Resource::Supplies => "supplies",
            Resource::Stores => "stores",
            Resource::Events => "events",
            Resource::Profiles => "profiles",
        }
    }

    /// Parses a path segment.
    pub fn from_name(name: &str) -> Option<Resource> {
        Resource::ALL
            .into_iter()
            .chain(Resource::SHAPES)
            .find(|r| r.name() == name)
    }
}

/// The dataset for a given number of orders.
#[derive(Debug, Clone, Copy)]
pub struct Dataset {
    orders: u64,
}

impl Dataset {
    /// The dataset with `orders` orders (at least 1).
    pub fn new(orders: u64) -> Self {
        Self {
            orders: orders.max(1),
        }
    }

    /// Number of records of a resource.
    pub fn total(&self, resource: Resource) -> u64 {
        let n = self.orders;
        match resource {
            Resource::Customers => (n / 5).max(1),
            Resource::Orders => n,
            Resource::Items => items_before_order(n),
            Resource::Products => 50 + n / 10_000,
            Resource::Supplies => 2 * (50 + n / 10_000),
            Resource::Stores => 4 + n / 100_000,
            Resource::Events => n,
            Resource::Profiles => (n / 10).max(1),
        }
    }

    /// Total records over the six resources of [`Resource::ALL`].
    pub fn total_rows(&self) -> u64 {
        Resource::ALL.iter().map(|r| self.total(*r)).sum()
    }

    /// Serializes records `offset..offset+limit` of a resource as a JSON array.
    pub fn write_page(
        &self,
        resource: Resource,
        offset: u64,
        limit: u64,
        out: &mut Vec<u8>,
    ) -> serde_json::Result<u64> {
        let end = offset.saturating_add(limit).min(self.total(resource));
        out.push(b'[');
        for (n, index) in (offset..end).enumerate() {
            if n > 0 {
                out.push(b',');
            }
            self.write_record(resource, index, &mut *out)?;
        }
        out.push(b']');
        Ok(end.saturating_sub(offset))
    }

    /// Serializes one record (0-based index) as JSON.
    pub fn write_record(
        &self,
        resource: Resource,
        index: u64,
        out: &mut Vec<u8>,
    ) -> serde_json::Result<()> {
        match resource {
            Resource::Customers => serde_json::to_writer(out, &self.customer(index)),
            Resource::Orders => serde_json::to_writer(out, &self.order(index)),
            Resource::Items => serde_json::to_writer(out, &self.item(index)),
            Resource::Products => serde_json::to_writer(out, &self.product(index)),
            Resource::Supplies => serde_json::to_writer(out, &self.supply(index)),
            Resource::Stores => serde_json::to_writer(out, &self.store(index)),
            Resource::Events => serde_json::to_writer(out, &self.event(index)),
            Resource::Profiles => serde_json::to_writer(out, &self.profile(index)),
        }
    }

    /// One record as a `serde_json::Value` (for tests comparing sink contents).
    pub fn record_value(&self, resource: Resource, index: u64) -> serde_json::Value {
        let mut out = Vec::new();
        self.write_record(resource, index, &mut out)
            .expect("records always serialize");
        serde_json::from_slice(&out).expect("records are valid JSON")
    }

    fn customer(&self, i: u64) -> Customer {
        let r = mix(1, i);
        let total = self.total(Resource::Customers);
        Customer {
            id: i + 1,
            name: format!("{} {}", pick(FIRST_NAMES, r), pick(LAST_NAMES, r >> 8)),
            email: format!("customer{}@example.test", i + 1),
            address: Address {
                street: format!("{} {}", 1 + (r >> 16) % 400, pick(STREETS, r >> 24)),
                city: pick(CITIES, r >> 32),
                postcode: format!("{:05}", (r >> 40) % 100_000),
                country: "NL",
            },
            tags: TAGS[..((r >> 48) % 4) as usize].to_vec(),
            created_at: timestamp(1_640_995_200 + i * 311),
            loyalty_tier: (i >= total / 2).then(|| pick(TIERS, r >> 52)),
        }
    }

    fn order(&self, i: u64) -> Order {
        let r = mix(2, i);
        let items = 1 + i % 4;
        let subtotal_cents = items * (500 + (r % 4000));
        let tax_cents = subtotal_cents * 9 / 100;
        let shipping_cents = if subtotal_cents > 5000 { 0 } else { 495 };
        Order {
            id: i + 1,
            customer_id: 1 + (r >> 8) % self.total(Resource::Customers),
            store_id: 1 + (r >> 24) % self.total(Resource::Stores),
            ordered_at: timestamp(1_704_067_200 + i * 37),
            status: pick(STATUSES, r >> 32),
            subtotal: cents(subtotal_cents),
            tax_paid: cents(tax_cents),
            order_total: cents(subtotal_cents + tax_cents + shipping_cents),
            item_count: items,
            shipping: Shipping {
                method: pick(SHIPPING, r >> 40),
                cost: cents(shipping_cents),
            },
            coupon: (i >= self.orders - self.orders / 10)
                .then(|| format!("SAVE{}", (r >> 48) % 50)),
        }
    }

    fn item(&self, k: u64) -> Item {
        let (order_index, line) = order_of_item(k);
        let r = mix(3, k);
        Item {
            id: k + 1,
            order_id: order_index + 1,
            line: line + 1,
            product_id: 1 + r % self.total(Resource::Products),
            quantity: 1 + (r >> 16) % 3,
            unit_price: cents(199 + (r >> 24) % 2000),
            options: OPTIONS[..((r >> 40) % 3) as usize].to_vec(),
        }
    }

    fn product(&self, i: u64) -> Product {
        let r = mix(4, i);
        let kind = pick(PRODUCT_TYPES, r);
        Product {
            id: i + 1,
            sku: format!("{}-{:03}", &kind[..3].to_uppercase(), i + 1),
            name: format!("{} {}", pick(ADJECTIVES, r >> 8), kind),
            kind,
            price: cents(299 + (r >> 16) % 2500),
            description: format!(
                "A {} {} from the example shop, made to order.",
                pick(ADJECTIVES, r >> 24),
                kind
            ),
            dimensions: Dimensions {
                width_cm: 5 + (r >> 32) % 30,
                height_cm: 5 + (r >> 40) % 30,
                depth_cm: 5 + (r >> 48) % 30,
            },
            tags: TAGS[((r >> 56) % 2) as usize..].to_vec(),
        }
    }

    fn supply(&self, i: u64) -> Supply {
        let r = mix(5, i);
        Supply {
            id: i + 1,
            product_id: i / 2 + 1,
            name: format!("{} {}", pick(ADJECTIVES, r), pick(SUPPLIES, r >> 8)),
            cost: cents(10 + (r >> 16) % 300),
            perishable: (r >> 24).is_multiple_of(3),
        }
    }

    fn store(&self, i: u64) -> Store {
        let r = mix(6, i);
        Store {
            id: i + 1,
            name: format!("{} Shop", pick(CITIES, i * 7 + 3)),
            opened_at: timestamp(1_514_764_800 + i * 86_400 * 97),
            tax_rate: 0.04 + ((r % 6) as f64) / 100.0,
            location: Location {
                lat: 50.0 + ((r >> 8) % 30_000) as f64 / 10_000.0,
                lon: 3.0 + ((r >> 24) % 40_000) as f64 / 10_000.0,
            },
        }
    }
}

impl Dataset {
    fn event(&self, i: u64) -> Event {
        let r = mix(7, i);
        let changes = (0..1 + r % 2)
            .map(|c| {
                let rc = mix(8, i * 4 + c);
                Change {
                    field: pick(EVENT_FIELDS, rc),
                    from: (rc >> 8) % 10_000,
                    to: (rc >> 24) % 10_000,
                    note: (rc >> 40)
                        .is_multiple_of(2)
                        .then(|| format!("rule {} ✓", (rc >> 44) % 100)),
                }
            })
            .collect();
        Event {
            id: i + 1,
            kind: pick(EVENT_KINDS, r >> 4),
            at: timestamp(1_704_067_200 + i * 13),
            actor: Actor {
                id: 1 + (r >> 8) % 50_000,
                name: format!(
                    "{} {}",
                    pick(FIRST_NAMES, r >> 12),
                    pick(LAST_NAMES, r >> 16)
                ),
                org: Org {
                    id: 1 + (r >> 20) % 500,
                    name: format!("{} B.V.", pick(CITIES, r >> 24)),
                    plan: pick(TIERS, r >> 28),
                },
            },
            changes,
            context: Context {
                ip: format!(
                    "10.{}.{}.{}",
                    (r >> 32) % 256,
                    (r >> 40) % 256,
                    (r >> 48) % 256
                ),
                user_agent: pick(AGENTS, r >> 52),
                latency_ms: ((r >> 20) % 5_000) as f64 / 10.0,
            },
            tags: TAGS[..((r >> 56) % 4) as usize].to_vec(),
        }
    }

    fn profile(&self, i: u64) -> serde_json::Map<String, serde_json::Value> {
        use serde_json::{Value, json};
        let r = mix(9, i);
        let half = self.total(Resource::Profiles) / 2;
        let mut out = serde_json::Map::new();
        out.insert("id".into(), json!(i + 1));
        let count = 12 + r % 29;
        let mut attr = (r >> 8) % 600;
        for n in 0..count {
            let ra = mix(10, i * 64 + n);
            // Steps of 1..=37 from a random start, spread over all 600.
            attr = (attr + 1 + ra % 37) % 600;
            let value = match attr % 5 {
                _ if attr == 7 => {
                    if i >= half {
                        json!(format!("code-{}", ra % 1000))
                    } else {
                        json!(ra % 1000)
                    }
                }
                0 => json!((ra >> 8) % 1_000_000),
                1 => json!(((ra >> 8) % 1_000_000) as f64 / 1000.0),
                2 => json!(format!(
                    "{} {}",
                    pick(ADJECTIVES, ra >> 8),
                    pick(SUPPLIES, ra >> 16)
                )),
                3 => json!((ra >> 8).is_multiple_of(2)),
                _ => json!({"v": (ra >> 8) % 100, "unit": pick(UNITS, ra >> 16)}),
            };
            // Steps wrap around past 600: a second draw of an attribute keeps the first.
            out.entry(format!("attr_{attr:03}")).or_insert(value);
        }
        if i.is_multiple_of(97) {
            out.insert("attr_599".into(), Value::Null);
        }
        out
    }
}

/// Items of orders `0..orders` (order `i` has `1 + i % 4` items).
fn items_before_order(orders: u64) -> u64 {
    let cycles = orders / 4;
    let rest = orders % 4;
    cycles * 10 + rest * (rest + 1) / 2
}

/// (order index, line index) of item `k`.
fn order_of_item(k: u64) -> (u64, u64) {
    let cycle = k / 10;
    let r = k % 10;
    let (in_cycle, start) = match r {
        0 => (0, 0),
        1..=2 => (1, 1),
        3..=5 => (2, 3),
        _ => (3, 6),
    };
    (cycle * 4 + in_cycle, r - start)
}

/// SplitMix64 over a resource seed and an index: cheap, deterministic, well mixed.
fn mix(seed: u64, index: u64) -> u64 {
    let mut z = index
        .wrapping_add(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn pick(list: &'static [&'static str], r: u64) -> &'static str {
    list[(r % list.len() as u64) as usize]
}

fn cents(c: u64) -> f64 {
    c as f64 / 100.0
}

const FIRST_NAMES: &[&str] = &[
    "Ada", "Björn", "Chiara", "Dmitri", "Elif", "Farah", "Gustavo", "Hana", "Ines", "Jun", "Kwame",
    "Lena", "Mateo", "Noor", "Olga", "Priya", "Quentin", "Rosa", "Søren", "Tomás",
];
const LAST_NAMES: &[&str] = &[
    "Andersen", "Bakker", "Castillo", "de Vries", "Eriksen", "Fischer", "García", "Huang",
    "Ivanova", "Jansen", "Kowalski", "López", "Müller", "Nakamura", "O'Brien", "Peeters",
];
const STREETS: &[&str] = &[
    "Main St",
    "Canal Rd",
    "Market Sq",
    "Mill Ln",
    "Harbour Way",
    "Elm Ave",
];
const CITIES: &[&str] = &[
    "Amsterdam",
    "Utrecht",
    "Rotterdam",
    "Den Haag",
    "Eindhoven",
    "Groningen",
    "Leiden",
    "Delft",
];
const TAGS: &[&str] = &["newsletter", "vip", "wholesale", "returning"];
const TIERS: &[&str] = &["bronze", "silver", "gold"];
const STATUSES: &[&str] = &["placed", "paid", "shipped", "delivered", "returned"];
const SHIPPING: &[&str] = &["standard", "express", "pickup"];
const OPTIONS: &[&str] = &["gift-wrap", "engraving"];
const PRODUCT_TYPES: &[&str] = &["mug", "poster", "notebook", "tote", "candle", "teapot"];
const ADJECTIVES: &[&str] = &["Classic", "Sturdy", "Bright", "Quiet", "Rustic", "Modern"];
const SUPPLIES: &[&str] = &["clay", "paper", "cotton", "wax", "glaze", "ink"];
const EVENT_KINDS: &[&str] = &[
    "order.updated",
    "customer.merged",
    "stock.adjusted",
    "price.changed",
];
const EVENT_FIELDS: &[&str] = &["quantity", "price_cents", "stock", "priority", "weight_g"];
const AGENTS: &[&str] = &[
    "Mozilla/5.0 (X11; Linux x86_64)",
    "shop-sync/2.3",
    "curl/8.5.0",
];
const UNITS: &[&str] = &["cm", "kg", "ml", "pcs"];

#[derive(Serialize)]
struct Org {
    id: u64,
    name: String,
    plan: &'static str,
}

#[derive(Serialize)]
struct Actor {
    id: u64,
    name: String,
    org: Org,
}

#[derive(Serialize)]
struct Change {
    field: &'static str,
    from: u64,
    to: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

#[derive(Serialize)]
struct Context {
    ip: String,
    user_agent: &'static str,
    latency_ms: f64,
}

#[derive(Serialize)]
struct Event {
    id: u64,
    kind: &'static str,
    at: String,
    actor: Actor,
    changes: Vec<Change>,
    context: Context,
    tags: Vec<&'static str>,
}

#[derive(Serialize)]
struct Address {
    street: String,
    city: &'static str,
    postcode: String,
    country: &'static str,
}

#[derive(Serialize)]
struct Customer {
    id: u64,
    name: String,
    email: String,
    address: Address,
    tags: Vec<&'static str>,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    loyalty_tier: Option<&'static str>,
}

#[derive(Serialize)]
struct Shipping {
    method: &'static str,
    cost: f64,
}

#[derive(Serialize)]
struct Order {
    id: u64,
    customer_id: u64,
    store_id: u64,
    ordered_at: String,
    status: &'static str,
    subtotal: f64,
    tax_paid: f64,
    order_total: f64,
    item_count: u64,
    shipping: Shipping,
    #[serde(skip_serializing_if = "Option::is_none")]
    coupon: Option<String>,
}

#[derive(Serialize)]
struct Item {
    id: u64,
    order_id: u64,
    line: u64,
    product_id: u64,
    quantity: u64,
    unit_price: f64,
    options: Vec<&'static str>,
}

#[derive(Serialize)]
struct Dimensions {
    width_cm: u64,
    height_cm: u64,
    depth_cm: u64,
}

#[derive(Serialize)]
struct Product {
    id: u64,
    sku: String,
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    price: f64,
    description: String,
    dimensions: Dimensions,
    tags: Vec<&'static str>,
}

#[derive(Serialize)]
struct Supply {
    id: u64,
    product_id: u64,
    name: String,
    cost: f64,
    perishable: bool,
}

#[derive(Serialize)]
struct Location {
    lat: f64,
    lon: f64,
}

#[derive(Serialize)]
struct Store {
    id: u64,
    name: String,
    opened_at: String,
    tax_rate: f64,
    location: Location,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_map_back_to_their_orders() {
        let ds = Dataset::new(10);
        assert_eq!(
            ds.total(Resource::Items),
            1 + 2 + 3 + 4 + 1 + 2 + 3 + 4 + 1 + 2
        );
        let mut per_order = std::collections::BTreeMap::new();
        for k in 0..ds.total(Resource::Items) {
            let (order, line) = order_of_item(k);
            let e = per_order.entry(order).or_insert(0);
            assert_eq!(line, *e, "lines are consecutive");
            *e += 1;
        }
        for (order, count) in per_order {
            assert_eq!(count, 1 + order % 4);
        }
    }

    #[test]
    fn data_is_deterministic_and_late_fields_appear_late() {
        let ds = Dataset::new(1000);
        assert_eq!(
            ds.record_value(Resource::Orders, 5),
            Dataset::new(1000).record_value(Resource::Orders, 5)
        );
        let first = ds.record_value(Resource::Customers, 0);
        let last = ds.record_value(Resource::Customers, ds.total(Resource::Customers) - 1);
        assert!(first.get("loyalty_tier").is_none());
        assert!(last.get("loyalty_tier").is_some());
        assert!(
            ds.record_value(Resource::Orders, 999)
                .get("coupon")
                .is_some()
        );
        assert!(ds.record_value(Resource::Orders, 0).get("coupon").is_none());
    }

    #[test]
    fn events_are_nested_and_280_to_460_bytes() {
        let ds = Dataset::new(20_000);
        let mut sizes = Vec::new();
        for i in 0..ds.total(Resource::Events) {
            let mut out = Vec::new();
            ds.write_record(Resource::Events, i, &mut out).unwrap();
            sizes.push(out.len());
        }
        let (min, max) = (*sizes.iter().min().unwrap(), *sizes.iter().max().unwrap());
        let big = sizes.iter().position(|s| *s == max).unwrap() as u64;
        assert!(
            min >= 280 && max <= 460,
            "{min}..{max} bytes: {}",
            ds.record_value(Resource::Events, big)
        );
        let e = ds.record_value(Resource::Events, 11);
        assert!(e["actor"]["org"]["plan"].is_string(), "{e}");
        assert!(e["changes"][0]["field"].is_string(), "{e}");
        assert_eq!(Resource::from_name("events"), Some(Resource::Events));
    }

    #[test]
    fn profiles_are_wide_sparse_and_change_a_type_late() {
        let ds = Dataset::new(50_000);
        let total = ds.total(Resource::Profiles);
        let mut fields = std::collections::BTreeSet::new();
        let (mut fewest, mut most) = (usize::MAX, 0);
        let mut kinds_of_007 = std::collections::BTreeSet::new();
        for i in 0..total {
            let p = ds.record_value(Resource::Profiles, i);
            let map = p.as_object().unwrap();
            fewest = fewest.min(map.len());
            most = most.max(map.len());
            fields.extend(map.keys().cloned());
            if let Some(v) = map.get("attr_007") {
                kinds_of_007.insert((i >= total / 2, v.is_string()));
            }
        }
        assert!(fields.len() > 550, "{} distinct fields", fields.len());
        assert!(
            fewest >= 10 && most <= 41,
            "{fewest}..{most} fields a record"
        );
        assert_eq!(
            kinds_of_007.into_iter().collect::<Vec<_>>(),
            vec![(false, false), (true, true)],
            "attr_007: integers first, strings in the second half"
        );
    }

    #[test]
    fn pages_are_json_arrays_of_the_requested_slice() {
        let ds = Dataset::new(100);
        let mut out = Vec::new();
        let n = ds.write_page(Resource::Orders, 95, 10, &mut out).unwrap();
        assert_eq!(n, 5);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 5);
        assert_eq!(v[0]["id"], 96);
    }
}
