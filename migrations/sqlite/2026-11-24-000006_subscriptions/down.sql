DROP TABLE subscription_deliveries;
DROP TABLE subscription_index;
