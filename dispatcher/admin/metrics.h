// The Prometheus exposition: per-thread counters summed at scrape time and
// written with prometheus-cpp's text serializer.
#pragma once

#include <prometheus/metric_family.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "dispatcher/loop.h"

namespace tandem::dispatcher {

// Families keyed by name, samples keyed by their label values, so the same
// series reported by several loops add up.
class MetricsBuilder {
 public:
  void Counter(const std::string& name, const std::string& help,
               std::vector<prometheus::ClientMetric::Label> labels,
               double value);
  void Gauge(const std::string& name, const std::string& help,
             std::vector<prometheus::ClientMetric::Label> labels, double value);
  // Adds one loop's histogram (non-cumulative buckets) to the series.
  void Histogram(const std::string& name, const std::string& help,
                 std::vector<prometheus::ClientMetric::Label> labels,
                 const LocalHistogram& histogram);
  std::string Serialize() const;

 private:
  prometheus::ClientMetric& Sample(
      const std::string& name, const std::string& help,
      prometheus::MetricType type,
      std::vector<prometheus::ClientMetric::Label> labels);

  struct Family {
    prometheus::MetricFamily family;
    std::map<std::vector<std::string>, size_t> index;  // label values -> sample
  };
  std::map<std::string, Family> families_;
};

// Adds the data path's counters of every loop.
void AddLoopMetrics(const std::vector<std::unique_ptr<Loop>>& loops,
                    MetricsBuilder* builder);

// Adds the descriptors tandem has open and may open, the budget every client
// and backend connection draws on.
void AddProcessMetrics(MetricsBuilder* builder);

}  // namespace tandem::dispatcher
