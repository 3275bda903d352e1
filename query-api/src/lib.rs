//! sluice-query-api
