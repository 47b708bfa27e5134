//! Diesel table definitions, the same for both backends (see migrations/sqlite and migrations/postgres).

diesel::table! {
    resources (res_type, res_id) {
        res_type -> Text,
        res_id -> Text,
        version_id -> BigInt,
        last_updated -> BigInt,
        deleted -> Bool,
        body -> Nullable<Text>,
    }
}

diesel::table! {
    resource_versions (seq) {
        seq -> BigInt,
        res_type -> Text,
        res_id -> Text,
        version_id -> BigInt,
        last_updated -> BigInt,
        method -> Text,
        body -> Nullable<Text>,
    }
}

diesel::table! {
    idx_token (row_id) {
        row_id -> BigInt,
        res_type -> Text,
        res_id -> Text,
        param -> Text,
        system -> Nullable<Text>,
        code -> Nullable<Text>,
        display -> Nullable<Text>,
    }
}

diesel::table! {
    idx_string (row_id) {
        row_id -> BigInt,
        res_type -> Text,
        res_id -> Text,
        param -> Text,
        norm -> Text,
        exact -> Text,
        norm_full -> Nullable<Text>,
    }
}

diesel::table! {
    idx_date (row_id) {
        row_id -> BigInt,
        res_type -> Text,
        res_id -> Text,
        param -> Text,
        low -> BigInt,
        high -> BigInt,
    }
}

diesel::table! {
    idx_reference (row_id) {
        row_id -> BigInt,
        res_type -> Text,
        res_id -> Text,
        param -> Text,
        target_type -> Nullable<Text>,
        target_id -> Nullable<Text>,
        url -> Nullable<Text>,
        date_low -> Nullable<BigInt>,
        date_high -> Nullable<BigInt>,
        date_long -> Nullable<Bool>,
    }
}

diesel::table! {
    idx_uri (row_id) {
        row_id -> BigInt,
        res_type -> Text,
        res_id -> Text,
        param -> Text,
        uri -> Text,
        uri_full -> Nullable<Text>,
    }
}

diesel::table! {
    idx_number (row_id) {
        row_id -> BigInt,
        res_type -> Text,
        res_id -> Text,
        param -> Text,
        value -> Double,
        system -> Nullable<Text>,
        code -> Nullable<Text>,
    }
}

diesel::table! {
    write_lock (id) {
        id -> BigInt,
        n -> BigInt,
    }
}

diesel::table! {
    search_snapshots (id) {
        id -> Text,
        created -> BigInt,
        total -> BigInt,
    }
}

diesel::table! {
    search_results (search_id, pos) {
        search_id -> Text,
        pos -> BigInt,
        res_type -> Text,
        res_id -> Text,
    }
}

diesel::table! {
    idx_composite (row_id) {
        row_id -> BigInt,
        res_type -> Text,
        res_id -> Text,
        param -> Text,
        system1 -> Nullable<Text>,
        code1 -> Nullable<Text>,
        system2 -> Nullable<Text>,
        code2 -> Nullable<Text>,
    }
}

diesel::table! {
    idx_position (row_id) {
        row_id -> BigInt,
        res_type -> Text,
        res_id -> Text,
        param -> Text,
        latitude -> Double,
        longitude -> Double,
        x -> Double,
        y -> Double,
        z -> Double,
    }
}

diesel::table! {
    bookings (row_id) {
        row_id -> BigInt,
        appointment_id -> Text,
        actor -> Text,
        start_ms -> BigInt,
        end_ms -> BigInt,
        kind -> Text,
    }
}

diesel::table! {
    audit_events (seq) {
        seq -> BigInt,
        id -> Text,
        recorded -> BigInt,
        action -> Text,
        subtype -> Text,
        outcome -> Text,
        altid -> Nullable<Text>,
        client_id -> Nullable<Text>,
        address -> Nullable<Text>,
        body -> Text,
    }
}

diesel::table! {
    audit_refs (event_id, kind, ref_) {
        event_id -> Text,
        kind -> Text,
        #[sql_name = "ref"]
        ref_ -> Text,
    }
}

diesel::table! {
    audit_refs_pending (seq) {
        seq -> BigInt,
        event_id -> Text,
        refs -> Text,
    }
}

diesel::table! {
    export_jobs (id) {
        id -> Text,
        state -> Text,
        level -> Text,
        group_id -> Nullable<Text>,
        types -> Text,
        since -> Nullable<BigInt>,
        request_url -> Text,
        requester -> Text,
        created -> BigInt,
        transaction_time -> Nullable<BigInt>,
        progress -> Nullable<Text>,
        owner -> Nullable<Text>,
        heartbeat -> Nullable<BigInt>,
        error -> Nullable<Text>,
        expires -> Nullable<BigInt>,
    }
}

diesel::table! {
    export_files (job_id, seq) {
        job_id -> Text,
        seq -> BigInt,
        res_type -> Text,
        count -> BigInt,
        content -> Text,
    }
}

diesel::table! {
    subscription_index (sub_id) {
        sub_id -> Text,
        res_type -> Text,
        criteria -> Text,
        endpoint -> Text,
        payload -> Nullable<Text>,
        headers -> Text,
        active -> Bool,
        end_ms -> Nullable<BigInt>,
    }
}

diesel::table! {
    subscription_deliveries (id) {
        id -> BigInt,
        sub_id -> Text,
        res_type -> Text,
        res_id -> Text,
        version_id -> BigInt,
        state -> Text,
        attempts -> Integer,
        next_attempt -> BigInt,
        lease_until -> Nullable<BigInt>,
        last_error -> Nullable<Text>,
        created -> BigInt,
    }
}
