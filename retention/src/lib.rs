//! sluice-retention
