package proxy

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/regmirror/regmirror/cache"
)

// fleetView is the status page's card of a replica's view of its fleet.
type fleetView struct {
	cache.FleetState
	Recent  int    // replicas that wrote a journal within three intervals
	PassAgo string // since the evictor's last pass; "" before the first
	// Blob bytes this replica sent to and received from the others' peer
	// endpoints: downloads shared without asking upstream.
	PeerSent, PeerReceived int64
}

// fleetView returns the view, ok false outside a fleet.
func (p *Proxy) fleetView(now time.Time) (fleetView, bool) {
	st, ok := p.op.Fleet()
	if !ok {
		return fleetView{}, false
	}
	v := fleetView{FleetState: st, PeerSent: p.stats.peerSent.Load(), PeerReceived: p.stats.peerRecv.Load()}
	for _, r := range st.Replicas {
		if r.Recent(now, st.Interval) {
			v.Recent++
		}
	}
	if !st.LastPass.IsZero() {
		v.PassAgo = now.Sub(st.LastPass).Round(time.Second).String()
	}
	return v, true
}

// fleetCollector exports a replica's view of its fleet: the bucket's usage
// as the evictor last counted it, who runs the evictor, the replicas seen
// and the journals waiting, and the tag answers shared.
type fleetCollector struct {
	p                                                             *Proxy
	bucketBytes, bucketObjects, evicted, evictedBytes, lastPass   *prometheus.Desc
	evictorHere, evictor, replicas, journals, sharedAnswers, wait *prometheus.Desc
	peerBytes                                                     *prometheus.Desc
}

func newFleetCollector(p *Proxy) *fleetCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("regmirror_fleet_"+name, help, labels, nil)
	}
	return &fleetCollector{p: p,
		bucketBytes:   d("bucket_bytes", "In multi-replica mode: bytes of content in the bucket at the evictor's last pass."),
		bucketObjects: d("bucket_objects", "In multi-replica mode: content objects in the bucket at the evictor's last pass."),
		evicted:       d("evicted_total", "In multi-replica mode: objects the fleet's evictor removed from the bucket, all replicas' passes told."),
		evictedBytes:  d("evicted_bytes_total", "In multi-replica mode: bytes the fleet's evictor removed from the bucket."),
		lastPass:      d("evictor_last_pass_timestamp_seconds", "In multi-replica mode: when the evictor last ran a pass (unix seconds); absent before the first."),
		evictorHere:   d("evictor_here", "In multi-replica mode: 1 while this replica holds the evictor's lease, 0 otherwise."),
		evictor:       d("evictor", "In multi-replica mode: 1, labelled with the replica this one saw holding the evictor's lease.", "replica"),
		replicas:      d("replicas_recent", "In multi-replica mode: replicas that wrote an access journal to the bucket within three REGMIRROR_FLEET_INTERVALs."),
		journals:      d("journals_waiting", "In multi-replica mode: access journals in the bucket not yet merged by the evictor, at this replica's last look."),
		sharedAnswers: d("shared_tag_answers_total", "In multi-replica mode: tag answers past this replica's TTL (or unknown to it) taken from the bucket, learned or revalidated by a replica within the TTL, instead of asking upstream."),
		wait:          d("shared_tag_waits_total", "In multi-replica mode: stale tag answers served while another replica revalidated the tag."),
		peerBytes:     d("peer_bytes_total", "In multi-replica mode: blob bytes this replica sent to other replicas' downloads from its peer endpoint (direction sent) and received from another's while following its download (received).", "direction"),
	}
}

func (c *fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.bucketBytes, c.bucketObjects, c.evicted, c.evictedBytes, c.lastPass,
		c.evictorHere, c.evictor, c.replicas, c.journals, c.sharedAnswers, c.wait, c.peerBytes} {
		ch <- d
	}
}

func (c *fleetCollector) Collect(ch chan<- prometheus.Metric) {
	v, ok := c.p.fleetView(c.p.opt.Now())
	if !ok {
		return
	}
	gauge := func(d *prometheus.Desc, n int64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(n))
	}
	counter := func(d *prometheus.Desc, n int64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(n))
	}
	gauge(c.bucketBytes, v.BucketBytes)
	gauge(c.bucketObjects, v.BucketObjects)
	counter(c.evicted, v.Evicted)
	counter(c.evictedBytes, v.EvictedBytes)
	if !v.LastPass.IsZero() {
		ch <- prometheus.MustNewConstMetric(c.lastPass, prometheus.GaugeValue, float64(v.LastPass.Unix()))
	}
	here := int64(0)
	if v.EvictorHere {
		here = 1
	}
	gauge(c.evictorHere, here)
	if v.Evictor != "" {
		ch <- prometheus.MustNewConstMetric(c.evictor, prometheus.GaugeValue, 1, v.Evictor)
	}
	gauge(c.replicas, int64(v.Recent))
	gauge(c.journals, int64(v.JournalsSeen))
	counter(c.sharedAnswers, v.SharedAnswers)
	counter(c.wait, v.SharedWaits)
	ch <- prometheus.MustNewConstMetric(c.peerBytes, prometheus.CounterValue, float64(v.PeerSent), "sent")
	ch <- prometheus.MustNewConstMetric(c.peerBytes, prometheus.CounterValue, float64(v.PeerReceived), "received")
}
