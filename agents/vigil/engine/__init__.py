"""The engine appliance agent: datapath setup, flow telemetry, rule-set enforcement."""
