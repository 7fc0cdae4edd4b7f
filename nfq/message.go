package nfq

import (
	"encoding/binary"

	"github.com/synguard/synguard/nf"
)

// The nfnetlink_queue wire format, as the receive loop reads and writes it
// (include/uapi/linux/netlink.h, netfilter/nfnetlink.h,
// netfilter/nfnetlink_queue.h). Netlink headers are in host byte order,
// nfnetlink payloads in network byte order.
const (
	nlmsgHdrLen = 16 // struct nlmsghdr
	nfgenHdrLen = 4  // struct nfgenmsg
	nlaHdrLen   = 4  // struct nlattr

	nlmsgNoop  = 1 // NLMSG_NOOP
	nlmsgError = 2 // NLMSG_ERROR
	nlmsgDone  = 3 // NLMSG_DONE

	nlmFRequest = 0x1 // NLM_F_REQUEST

	nlaTypeMask = 0x3fff // NLA_TYPE_MASK: without NLA_F_NESTED, NLA_F_NET_BYTEORDER

	nfqnlMsgVerdict      = 1 // NFQNL_MSG_VERDICT
	nfqnlMsgVerdictBatch = 3 // NFQNL_MSG_VERDICT_BATCH

	nfqaPacketHdr  = 1  // NFQA_PACKET_HDR: struct nfqnl_msg_packet_hdr
	nfqaVerdictHdr = 2  // NFQA_VERDICT_HDR: struct nfqnl_msg_verdict_hdr
	nfqaMark       = 3  // NFQA_MARK
	nfqaInDev      = 5  // NFQA_IFINDEX_INDEV
	nfqaHwAddr     = 9  // NFQA_HWADDR: struct nfqnl_msg_packet_hw
	nfqaPayload    = 10 // NFQA_PAYLOAD

	// Kernel verdicts (include/uapi/linux/netfilter.h).
	nfDrop   = 0
	nfAccept = 1
	nfRepeat = 4

	// verdictMsgLen is one verdict message: header, nfgenmsg and the
	// NFQA_VERDICT_HDR attribute carrying {verdict, id}.
	verdictMsgLen = nlmsgHdrLen + nfgenHdrLen + nlaHdrLen + 8

	// payloadHdrLen is a verdict message up to its packet: the verdict
	// message and the NFQA_PAYLOAD attribute's header.
	payloadHdrLen = verdictMsgLen + nlaHdrLen
)

// MaxPacket is the largest packet the queue copies to the handler and
// takes back in a verdict (Release, nf.AcceptRewritten): an attribute's
// length is 16 bits and includes its 4-byte header (the kernel's
// NFQNL_MAX_COPY_RANGE).
const MaxPacket = 0xffff - nlaHdrLen

// nfnlPacketMsg is the netlink message type of a queued packet:
// NFNL_SUBSYS_QUEUE<<8 | NFQNL_MSG_PACKET.
const nfnlPacketMsg = nfnlSubsysQueue<<8 | nfqnlMsgPacket

const (
	nfnlSubsysQueue = 3 // NFNL_SUBSYS_QUEUE
	nfqnlMsgPacket  = 0 // NFQNL_MSG_PACKET
)

func align4(n int) int { return (n + 3) &^ 3 }

func nativeUint16(b []byte) uint16 { return binary.NativeEndian.Uint16(b) }
func nativeUint32(b []byte) uint32 { return binary.NativeEndian.Uint32(b) }

// packetMsg is what the receive loop reads from one NFQNL_MSG_PACKET.
type packetMsg struct {
	id      uint32
	hasID   bool
	hook    nf.Hook
	mark    uint32
	inDev   uint32
	hwAddr  []byte // nil when absent
	payload []byte // nil when absent
}

// parsePacketMsg reads the attributes of a packet message: body is the
// message after its netlink header (nfgenmsg, then attributes). Unknown
// attributes are skipped; a malformed attribute ends the walk, keeping
// what was read before it.
func parsePacketMsg(body []byte, m *packetMsg) {
	*m = packetMsg{}
	if len(body) < nfgenHdrLen {
		return
	}
	b := body[nfgenHdrLen:]
	for len(b) >= nlaHdrLen {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4]) & nlaTypeMask
		if l < nlaHdrLen || l > len(b) {
			return
		}
		v := b[nlaHdrLen:l]
		switch typ {
		case nfqaPacketHdr:
			// struct nfqnl_msg_packet_hdr { __be32 packet_id; __be16 hw_protocol; __u8 hook; }
			if len(v) >= 7 {
				m.id, m.hasID = binary.BigEndian.Uint32(v[0:4]), true
				m.hook = nf.Hook(v[6])
			}
		case nfqaMark:
			if len(v) >= 4 {
				m.mark = binary.BigEndian.Uint32(v[0:4])
			}
		case nfqaInDev:
			if len(v) >= 4 {
				m.inDev = binary.BigEndian.Uint32(v[0:4])
			}
		case nfqaHwAddr:
			// struct nfqnl_msg_packet_hw { __be16 hw_addrlen; __u16 _pad; __u8 hw_addr[8]; }
			if len(v) >= 4 {
				if n := int(binary.BigEndian.Uint16(v[0:2])); n > 0 && n <= len(v)-4 && n <= 8 {
					m.hwAddr = v[4 : 4+n]
				}
			}
		case nfqaPayload:
			m.payload = v
		}
		b = b[min(align4(l), len(b)):]
	}
}

// putVerdictBatch writes an NFQNL_MSG_VERDICT_BATCH message into b (at
// least verdictMsgLen bytes): verdict for every packet of queue whose id is
// at most id (the kernel's ids are in queueing order and wrap around) and
// that still waits for one.
func putVerdictBatch(b []byte, queue uint16, id uint32, verdict uint32) {
	putVerdictMsg(b, nfqnlMsgVerdictBatch, verdictMsgLen, queue, id, verdict)
}

// putVerdict writes an NFQNL_MSG_VERDICT message for packet id alone into
// b: verdictMsgLen bytes without a packet, else payloadHdrLen bytes, which
// the packet (packetLen bytes) and its padding to 4 bytes must follow. The
// kernel replaces the packet's bytes with those; it checks no checksum
// and recomputes none.
func putVerdict(b []byte, queue uint16, id, verdict uint32, packetLen int) {
	if packetLen == 0 {
		putVerdictMsg(b, nfqnlMsgVerdict, verdictMsgLen, queue, id, verdict)
		return
	}
	_ = b[payloadHdrLen-1]
	putVerdictMsg(b, nfqnlMsgVerdict, uint32(payloadHdrLen+align4(packetLen)), queue, id, verdict)
	binary.NativeEndian.PutUint16(b[32:34], uint16(nlaHdrLen+packetLen))
	binary.NativeEndian.PutUint16(b[34:36], nfqaPayload)
}

// putVerdictMsg writes the header and NFQA_VERDICT_HDR of a verdict
// message of type typ whose whole length is msgLen.
func putVerdictMsg(b []byte, typ uint16, msgLen uint32, queue uint16, id, verdict uint32) {
	_ = b[verdictMsgLen-1]
	ne, be := binary.NativeEndian, binary.BigEndian
	ne.PutUint32(b[0:4], msgLen)
	ne.PutUint16(b[4:6], nfnlSubsysQueue<<8|typ)
	ne.PutUint16(b[6:8], nlmFRequest)
	ne.PutUint32(b[8:12], 0)  // sequence: no reply is asked for
	ne.PutUint32(b[12:16], 0) // port id: the kernel fills it in
	b[16] = 0                 // nfgenmsg.nfgen_family: AF_UNSPEC
	b[17] = 0                 // nfgenmsg.version: NFNETLINK_V0
	be.PutUint16(b[18:20], queue)
	ne.PutUint16(b[20:22], nlaHdrLen+8)
	ne.PutUint16(b[22:24], nfqaVerdictHdr)
	be.PutUint32(b[24:28], verdict)
	be.PutUint32(b[28:32], id)
}
