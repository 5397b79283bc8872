/*
 * vigil_clientid: a Mosquitto 2 plugin (plugin API version 5) that binds client ids to the
 * users that own them.
 *
 * Mosquitto lets any authenticated client take any client id: a second connection with an
 * id in use closes the first and resumes or wipes its persistent session. This plugin reads
 * a file of reserved client ids and their owners and, on every CONNECT, refuses a reserved
 * id unless the client authenticates as its owner:
 *
 *   - id reserved, username is the owner    -> MOSQ_ERR_PLUGIN_DEFER (password_file decides)
 *   - id reserved, other user or no username -> MOSQ_ERR_AUTH (CONNACK "not authorised"),
 *                                             logged with the id, the username and the address
 *   - id not reserved                        -> MOSQ_ERR_PLUGIN_DEFER
 *
 * It never says yes: authentication stays with password_file, authorisation with acl_file.
 * Mosquitto runs this callback before the password file's (plugins are initialised before the
 * default security), and only after it has assigned an id to a client that sent an empty
 * one, so such clients are checked too (and are never refused: assigned ids are random).
 *
 * Configuration (mosquitto.conf, after "per_listener_settings false"):
 *
 *   plugin /path/to/vigil_clientid.so
 *   plugin_opt_owners /path/to/clientids
 *
 *   plugin_opt_owners_live /path/to/clientids.devices     (optional)
 *
 * The owners file: one "<client id> <username>" per line; blank lines and lines starting with
 * '#' are ignored. Names hold no white space. It is read at start (an unreadable or malformed
 * file stops the broker: refusing nothing would be silent) and again on SIGHUP (a bad file
 * then keeps the previous table and logs why).
 *
 * The live owners file has the same format and holds the devices added while the broker runs
 * (Vigil's API writes it atomically when it adds or removes a device). It is checked on every
 * CONNECT and read again whenever it changed (inode, size or modification time), so a device
 * added a moment ago has its id reserved before it first connects. A missing file is an empty
 * table; a bad one keeps the previous table and logs why. An id is reserved if either file
 * lists it; the first file is checked first.
 *
 * Generated and built by Vigil's broker/provision.py; the same source is compiled into the
 * compose broker image (deploy/mosquitto/Dockerfile).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "mosquitto_broker.h"
#include "mosquitto_plugin.h"
#include "mosquitto.h"

#define PLUGIN_NAME "vigil_clientid"
#define OWNERS_OPTION "owners"
#define LIVE_OPTION "owners_live"
#define MAX_LINE 512

struct owner {
	char *client_id;
	char *username;
};

struct table {
	struct owner *entries;
	size_t count;
};

/* What identifies a version of the live file: re-read when any of these changes. */
struct stamp {
	int exists;
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtime;
};

struct state {
	mosquitto_plugin_id_t *pid;
	char *path;
	struct table table;
	char *live_path; /* NULL: no live file */
	struct table live;
	struct stamp live_stamp;
};

static int owner_cmp(const void *a, const void *b)
{
	return strcmp(((const struct owner *)a)->client_id, ((const struct owner *)b)->client_id);
}

static void table_free(struct table *t)
{
	size_t i;

	for(i = 0; i < t->count; i++){
		free(t->entries[i].client_id);
		free(t->entries[i].username);
	}
	free(t->entries);
	t->entries = NULL;
	t->count = 0;
}

/* Reads the owners file into *out. On failure logs why, leaves *out untouched and returns
 * an error code. */
static int table_load(const char *path, struct table *out)
{
	FILE *f;
	char line[MAX_LINE];
	char id[MAX_LINE], user[MAX_LINE], extra[2];
	struct table t = {NULL, 0};
	size_t cap = 0, i;
	int lineno = 0, fields;
	struct owner *grown;

	f = fopen(path, "r");
	if(f == NULL){
		mosquitto_log_printf(MOSQ_LOG_ERR, PLUGIN_NAME ": cannot read %s: %s", path, strerror(errno));
		return MOSQ_ERR_UNKNOWN;
	}
	while(fgets(line, sizeof(line), f)){
		lineno++;
		if(strchr(line, '\n') == NULL && !feof(f)){
			mosquitto_log_printf(MOSQ_LOG_ERR, PLUGIN_NAME ": %s:%d: line too long", path, lineno);
			goto fail;
		}
		fields = sscanf(line, "%511s %511s %1s", id, user, extra);
		if(fields <= 0 || id[0] == '#'){
			continue; /* blank or comment */
		}
		if(fields != 2){
			mosquitto_log_printf(MOSQ_LOG_ERR,
					PLUGIN_NAME ": %s:%d: expected \"<client id> <username>\"", path, lineno);
			goto fail;
		}
		if(t.count == cap){
			cap = cap ? cap * 2 : 64;
			grown = realloc(t.entries, cap * sizeof(struct owner));
			if(grown == NULL) goto nomem;
			t.entries = grown;
		}
		t.entries[t.count].client_id = strdup(id);
		t.entries[t.count].username = strdup(user);
		if(t.entries[t.count].client_id == NULL || t.entries[t.count].username == NULL){
			free(t.entries[t.count].client_id);
			free(t.entries[t.count].username);
			goto nomem;
		}
		t.count++;
	}
	if(ferror(f)){
		mosquitto_log_printf(MOSQ_LOG_ERR, PLUGIN_NAME ": cannot read %s: %s", path, strerror(errno));
		goto fail;
	}
	fclose(f);
	if(t.count > 1){
		qsort(t.entries, t.count, sizeof(struct owner), owner_cmp);
	}
	for(i = 1; i < t.count; i++){
		if(strcmp(t.entries[i - 1].client_id, t.entries[i].client_id) == 0){
			mosquitto_log_printf(MOSQ_LOG_ERR,
					PLUGIN_NAME ": %s: client id \"%s\" is listed twice", path, t.entries[i].client_id);
			table_free(&t);
			return MOSQ_ERR_INVAL;
		}
	}
	*out = t;
	mosquitto_log_printf(MOSQ_LOG_INFO,
			PLUGIN_NAME ": %lu reserved client ids from %s", (unsigned long)t.count, path);
	return MOSQ_ERR_SUCCESS;

nomem:
	mosquitto_log_printf(MOSQ_LOG_ERR, PLUGIN_NAME ": out of memory reading %s", path);
fail:
	fclose(f);
	table_free(&t);
	return MOSQ_ERR_INVAL;
}

static const char *owner_of(const struct table *t, const char *client_id)
{
	struct owner key, *found;

	if(t->count == 0) return NULL;
	key.client_id = (char *)client_id;
	key.username = NULL;
	found = bsearch(&key, t->entries, t->count, sizeof(struct owner), owner_cmp);
	return found ? found->username : NULL;
}

static void stamp_of(const char *path, struct stamp *out)
{
	struct stat sb;

	memset(out, 0, sizeof(*out));
	if(stat(path, &sb) == 0){
		out->exists = 1;
		out->dev = sb.st_dev;
		out->ino = sb.st_ino;
		out->size = sb.st_size;
		out->mtime = sb.st_mtim;
	}
}

static int stamp_eq(const struct stamp *a, const struct stamp *b)
{
	return a->exists == b->exists && a->dev == b->dev && a->ino == b->ino && a->size == b->size
		&& a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec;
}

/* Re-reads the live owners file if it changed since the last read. */
static void live_refresh(struct state *st)
{
	struct stamp now;
	struct table fresh = {NULL, 0};

	if(st->live_path == NULL) return;
	stamp_of(st->live_path, &now);
	if(stamp_eq(&now, &st->live_stamp)) return;
	if(now.exists && table_load(st->live_path, &fresh) != MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_ERR,
				PLUGIN_NAME ": keeping the previous %lu live reserved client ids",
				(unsigned long)st->live.count);
		st->live_stamp = now; /* logged once per version of the file */
		return;
	}
	table_free(&st->live);
	st->live = fresh;
	st->live_stamp = now;
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	struct state *st = userdata;
	const char *client_id, *username, *owner, *address;

	(void)event;
	client_id = mosquitto_client_id(ed->client);
	if(client_id == NULL){
		return MOSQ_ERR_PLUGIN_DEFER; /* no id, no session to take */
	}
	owner = owner_of(&st->table, client_id);
	if(owner == NULL){
		live_refresh(st);
		owner = owner_of(&st->live, client_id);
	}
	if(owner == NULL){
		return MOSQ_ERR_PLUGIN_DEFER;
	}
	username = ed->username;
	if(username != NULL && strcmp(username, owner) == 0){
		return MOSQ_ERR_PLUGIN_DEFER;
	}
	address = mosquitto_client_address(ed->client);
	mosquitto_log_printf(MOSQ_LOG_WARNING,
			PLUGIN_NAME ": refused client id \"%s\" to %s%s%s from %s: it belongs to user \"%s\"",
			client_id,
			username ? "user \"" : "a client without username",
			username ? username : "",
			username ? "\"" : "",
			address ? address : "?",
			owner);
	return MOSQ_ERR_AUTH;
}

static int on_reload(int event, void *event_data, void *userdata)
{
	struct state *st = userdata;
	struct table fresh;

	(void)event;
	(void)event_data;
	if(table_load(st->path, &fresh) == MOSQ_ERR_SUCCESS){
		table_free(&st->table);
		st->table = fresh;
	}else{
		mosquitto_log_printf(MOSQ_LOG_ERR,
				PLUGIN_NAME ": keeping the previous %lu reserved client ids",
				(unsigned long)st->table.count);
	}
	/* Defer, so that the broker goes on to reload the password file and ACL. */
	return MOSQ_ERR_PLUGIN_DEFER;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	int i;

	for(i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5){
			return 5;
		}
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **user_data,
		struct mosquitto_opt *opts, int opt_count)
{
	struct state *st;
	const char *path = NULL, *live_path = NULL;
	int i, rc;

	for(i = 0; i < opt_count; i++){
		if(strcmp(opts[i].key, OWNERS_OPTION) == 0){
			path = opts[i].value;
		}else if(strcmp(opts[i].key, LIVE_OPTION) == 0){
			live_path = opts[i].value;
		}
	}
	if(path == NULL || path[0] == '\0'){
		mosquitto_log_printf(MOSQ_LOG_ERR,
				PLUGIN_NAME ": missing \"plugin_opt_" OWNERS_OPTION " <file>\" in the configuration");
		return MOSQ_ERR_INVAL;
	}
	st = calloc(1, sizeof(struct state));
	if(st == NULL) return MOSQ_ERR_NOMEM;
	st->pid = identifier;
	st->path = strdup(path);
	if(st->path == NULL){
		free(st);
		return MOSQ_ERR_NOMEM;
	}
	if(live_path != NULL && live_path[0] != '\0'){
		st->live_path = strdup(live_path);
		if(st->live_path == NULL){
			free(st->path);
			free(st);
			return MOSQ_ERR_NOMEM;
		}
	}
	rc = table_load(st->path, &st->table);
	if(rc == MOSQ_ERR_SUCCESS){
		rc = mosquitto_callback_register(identifier, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, st);
	}
	if(rc == MOSQ_ERR_SUCCESS){
		rc = mosquitto_callback_register(identifier, MOSQ_EVT_RELOAD, on_reload, NULL, st);
		if(rc != MOSQ_ERR_SUCCESS){
			mosquitto_callback_unregister(identifier, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
		}
	}
	if(rc != MOSQ_ERR_SUCCESS){
		table_free(&st->table);
		free(st->path);
		free(st->live_path);
		free(st);
		return rc;
	}
	*user_data = st;
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *user_data, struct mosquitto_opt *opts, int opt_count)
{
	struct state *st = user_data;

	(void)opts;
	(void)opt_count;
	if(st == NULL) return MOSQ_ERR_SUCCESS;
	mosquitto_callback_unregister(st->pid, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
	mosquitto_callback_unregister(st->pid, MOSQ_EVT_RELOAD, on_reload, NULL);
	table_free(&st->table);
	table_free(&st->live);
	free(st->path);
	free(st->live_path);
	free(st);
	return MOSQ_ERR_SUCCESS;
}
