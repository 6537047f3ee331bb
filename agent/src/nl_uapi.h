/*
 * The few rtnetlink definitions netlink.c needs, copied from the Linux UAPI headers
 * (<linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_link.h>, <linux/if_addr.h>), which the musl
 * toolchain does not ship. These are kernel ABI and never change.
 */
#ifndef FASTVM_NL_UAPI_H
#define FASTVM_NL_UAPI_H

#include <stdint.h>
#include <sys/socket.h>

#ifndef NETLINK_ROUTE
#define NETLINK_ROUTE 0
#endif

struct sockaddr_nl {
	sa_family_t nl_family; /* AF_NETLINK */
	unsigned short nl_pad;
	uint32_t nl_pid; /* port id; 0 is the kernel */
	uint32_t nl_groups;
};

struct nlmsghdr {
	uint32_t nlmsg_len; /* header included */
	uint16_t nlmsg_type;
	uint16_t nlmsg_flags;
	uint32_t nlmsg_seq;
	uint32_t nlmsg_pid;
};

struct nlmsgerr {
	int error; /* negative errno, or 0 for an ACK */
	struct nlmsghdr msg;
};

struct rtattr {
	unsigned short rta_len; /* header included */
	unsigned short rta_type;
};

struct ifinfomsg {
	unsigned char ifi_family;
	unsigned char ifi_pad;
	unsigned short ifi_type;
	int ifi_index;
	unsigned int ifi_flags;
	unsigned int ifi_change; /* which ifi_flags bits to change */
};

struct ifaddrmsg {
	uint8_t ifa_family;
	uint8_t ifa_prefixlen;
	uint8_t ifa_flags;
	uint8_t ifa_scope;
	uint32_t ifa_index;
};

struct rtmsg {
	unsigned char rtm_family;
	unsigned char rtm_dst_len;
	unsigned char rtm_src_len;
	unsigned char rtm_tos;
	unsigned char rtm_table;
	unsigned char rtm_protocol;
	unsigned char rtm_scope;
	unsigned char rtm_type;
	unsigned int rtm_flags;
};

#define NLMSG_ALIGNTO 4u
#define NLMSG_ALIGN(len) (((len) + NLMSG_ALIGNTO - 1) & ~(NLMSG_ALIGNTO - 1))
#define NLMSG_HDRLEN ((uint32_t)NLMSG_ALIGN(sizeof(struct nlmsghdr)))
#define RTA_ALIGNTO 4u
#define RTA_ALIGN(len) (((len) + RTA_ALIGNTO - 1) & ~(RTA_ALIGNTO - 1))

/* nlmsg_flags */
#define NLM_F_REQUEST 0x01
#define NLM_F_ACK 0x04
#define NLM_F_DUMP 0x300
#define NLM_F_REPLACE 0x100
#define NLM_F_CREATE 0x400

/* nlmsg_type */
#define NLMSG_ERROR 0x2
#define NLMSG_DONE 0x3
#define RTM_NEWLINK 16
#define RTM_GETLINK 18
#define RTM_NEWADDR 20
#define RTM_DELADDR 21
#define RTM_GETADDR 22
#define RTM_NEWROUTE 24

/* link attributes */
#define IFLA_ADDRESS 1
#define IFLA_IFNAME 3

/* address attributes and flags */
#define IFA_ADDRESS 1
#define IFA_LOCAL 2
#define IFA_FLAGS 8
#define IFA_F_NODAD 0x02

/* route attributes and values */
#define RTA_DST 1
#define RTA_OIF 4
#define RTA_GATEWAY 5
#define RTA_PRIORITY 6
#define RT_TABLE_MAIN 254
#define RTPROT_BOOT 3
#define RT_SCOPE_UNIVERSE 0
#define RT_SCOPE_LINK 253
#define RT_SCOPE_HOST 254
#define RTN_UNICAST 1

#endif
